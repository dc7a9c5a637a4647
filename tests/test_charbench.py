"""CharBench (tokenlab.evals.charbench, method charbench): exact answers, annotation,
the evaluator against oracle LMs, the task stream, and the analysis."""

import re

import numpy as np
import pytest

from tokenlab.data.tokenizers import BPETokenizer, BytesTokenizer
from tokenlab.evals import charbench as cb

LINE = re.compile(r"^([a-z]+) (count|find) ([a-z])=(\d+)$")


def _truth(word, verb, c):
  return word.count(c) if verb == "count" else word.find(c)


def test_answers_are_exact():
  rng = np.random.default_rng(0)
  words = ["banana", "letter", "abc", "mississippi"]
  for task in ("count", "locate"):
    for ex in cb.make_examples(words, task, 300, rng):
      assert ex.answer == _truth(ex.word, cb.TASKS[task], ex.char)
      assert ex.true_count == ex.word.count(ex.char)
      if task == "locate":
        assert ex.word[ex.answer] == ex.char and ex.char not in ex.word[:ex.answer]
      assert ex.answer in cb.candidates(task)
  absent = [e for e in cb.make_examples(words, "count", 300, rng) if e.true_count == 0]
  assert absent and all(e.answer == 0 for e in absent)


def test_word_lists_are_disjoint_and_deterministic():
  train, test = cb.words("train"), cb.words("test")
  assert len(train) > 1000 and len(test) > 200
  assert not set(train) & set(test)
  assert all(w.isalpha() and w.islower() and 3 <= len(w) <= 10 for w in train[:500])
  assert cb.words("test") == test


def test_annotate_finds_the_token_holding_the_character():
  docs = [b"banana find n=2", b"bandana count a=3", b"banana count b=1"] * 20
  bpe = BPETokenizer.train(docs, 290)   # all 256 bytes + merges
  exs = [cb.Example("banana", "locate", c, "banana".find(c), "banana".count(c))
         for c in "ban"]
  cb.annotate(exs, bpe)
  pieces = [bpe.token_bytes(int(t)) for t in bpe.encode(b"\nbanana find x=")]
  for ex in exs:
    off, pos = 1 + ex.query_index, 0
    for p in pieces:
      if pos <= off < pos + len(p):
        assert ex.token_len == len(p) and chr(p[off - pos]) == ex.char
      pos += len(p)
  assert max(e.token_len for e in exs) > 1
  assert all(e.token_len == 1 for e in cb.annotate(exs, BytesTokenizer()))


class OracleLM:
  """A byte-level LM that knows the task: puts logit 20 on the next byte of the line with
  answer `truth + shift` (uniform elsewhere and before the answer)."""

  def __init__(self, shift=0):
    self.shift = shift

  def __call__(self, tokens):
    B, L = tokens.shape
    logits = np.zeros((B, L, 256))
    for b in range(B):
      text = bytes(tokens[b].astype(np.uint8)).decode("latin-1")
      m = re.match(r"\n([a-z]+) (count|find) ([a-z])=", text)
      if not m:
        continue
      line = m.group(0) + f"{_truth(*m.groups()) + self.shift}\n"
      for t in range(len(m.group(0)) - 1, min(len(line) - 1, L)):
        logits[b, t, ord(line[t + 1])] = 20.0
    return logits


def test_evaluator_is_exact_against_oracles():
  rng = np.random.default_rng(1)
  exs = (cb.make_examples(["banana", "letter", "abcdefghi"], "locate", 20, rng)
         + cb.make_examples(["banana", "letter", "abcdefghi"], "count", 20, rng))
  tok = BytesTokenizer()
  pred, correct = cb.evaluate(OracleLM(), tok, exs, batch_size=64)
  assert correct.all()
  np.testing.assert_array_equal(pred, [e.answer for e in exs])
  pred, correct = cb.evaluate(OracleLM(shift=1), tok, exs, batch_size=64)
  assert not correct.any()
  np.testing.assert_array_equal(pred, [e.answer + 1 for e in exs])


def test_task_stream_rows_hold_correct_lines_and_resume():
  tok = BytesTokenizer()
  it = cb.TaskStream(tok, ["banana", "letter", "mississippi"], 3, 64, seed=0)
  b = next(it)
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  n = 0
  for row in b["inputs"]:
    text = tok.decode(row).decode()
    assert text.startswith("\n")
    for line in text.split("\n")[1:-1]:       # complete lines only
      m = LINE.match(line)
      assert m, line
      assert int(m.group(4)) == _truth(m.group(1), m.group(2), m.group(3))
      n += 1
  assert n >= 3
  state = it.get_state()
  b2 = next(it)
  it2 = cb.TaskStream(tok, ["banana", "letter", "mississippi"], 3, 64, seed=0)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["inputs"], b2["inputs"])


def test_analysis_buckets_and_correlations():
  exs = [cb.Example("ab", "locate", "a", 0, 1, token_len=1),
         cb.Example("abc", "locate", "a", 0, 1, token_len=1),
         cb.Example("abcd", "locate", "a", 0, 1, token_len=3),
         cb.Example("abcde", "locate", "a", 0, 1, token_len=3)]
  a = cb.analysis(exs, np.array([True, True, False, False]))
  assert a["accuracy"] == 0.5
  assert a["by_token_len"] == {1: (1.0, 2), 3: (0.0, 2)}
  np.testing.assert_allclose(a["corr_token_len"], -1.0)
  assert np.isnan(a["corr_true_count"])            # constant property: no correlation


def test_answer_loss_masks_all_but_the_answer_tokens():
  tok = BytesTokenizer()
  it = cb.TaskStream(tok, ["banana", "letter"], 2, 40, seed=0, tasks=("locate",),
                     answer_loss=True)
  b = next(it)
  for row, mask in zip(b["targets"], b["loss_mask"]):
    text = tok.decode(row).decode()
    kept = "".join(c for c, m in zip(text, mask) if m)
    lines = [l for l in text.split("\n")[:-1]]
    # Every complete line contributes exactly its answer digit(s) and its newline.
    want = "".join(l.split("=")[1] + "\n" for l in lines if "=" in l)
    assert kept.startswith(want) and 0 < mask.sum() < len(mask)
  full = next(cb.TaskStream(tok, ["banana"], 2, 40, seed=0))
  assert full["loss_mask"].min() == 1.0


def test_repro_quick(tmp_path):
  import json
  import tokenlab.repro
  report = tokenlab.repro.run("charbench", workdir=str(tmp_path), quick=True)
  assert report.verdict == tokenlab.repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "charbench.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {"char_beats_prior", "bpe_beats_prior",
                                                "char_locates_better", "token_length_effect"}
  rows = {(a, m): v for a, m, v, _, _ in report.rows}
  assert 0.0 < rows[("answer prior", "locate accuracy")] < 0.6
  assert 0.0 <= rows[("char", "locate accuracy")] <= 1.0
