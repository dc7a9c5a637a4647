"""Needle threading (tokenlab.evals.needle, method needle_threading): haystacks with exact
answers, the exact-match evaluator, the baselines, and the quick reproduction."""

import numpy as np
import pytest

from tokenlab.data.tokenizers import BytesTokenizer
from tokenlab.evals import needle

TOK = BytesTokenizer()


def _lookup(ex):
  pairs = [p.split(":") for p in ex.context.strip().rstrip(",").split(",")]
  return pairs, dict(pairs)


@pytest.mark.parametrize("task", needle.TASKS)
@pytest.mark.parametrize("key_len", [1, 2])
def test_haystack_answers_are_exact(task, key_len):
  rng = np.random.default_rng(key_len)
  for _ in range(20):
    ex = needle.make_haystack(task, 12, rng, key_len=key_len, hops=3, threads=2)
    pairs, table = _lookup(ex)
    assert len(table) == len(pairs) == ex.num_pairs          # keys are distinct
    assert all(len(k) == len(v) == key_len for k, v in pairs)
    assert set(table.values()) <= set(table) | set(ex.answer.replace(">", ",").split(","))
    query = ex.prompt[:-1]
    if task == "single":
      assert ex.answer == table[query]
    elif task == "multiple":
      assert ex.answer == ",".join(table[k] for k in query.split(","))
    elif task == "conditional":
      assert ex.answer == ",".join(v for k, v in pairs if query[1] in k)
    else:
      want = []
      for key in query.split(","):
        chain = []
        for _ in range(3):
          key = table[key]
          chain.append(key)
        want.append(">".join(chain))
      assert ex.answer == ",".join(want)
      assert chain[-1] not in table                           # the thread ends there
    assert ex.text.endswith(ex.prompt + ex.answer + "\n")


def test_depth_and_distance():
  rng = np.random.default_rng(0)
  first = needle.make_haystack("single", 10, rng, depth=0.0)
  last = needle.make_haystack("single", 10, rng, depth=1.0)
  assert first.prompt[:-1] == first.context[0] and first.depth == 0.0
  assert last.prompt[:-1] == last.context[-5] and last.depth == 1.0
  # distance: bytes from the needle pair's start to the end of the query
  assert last.distance == 4 + 1 + 2
  assert first.distance == len(first.context) + len(first.prompt)


@pytest.mark.parametrize("task", ["single", "threading", "multi_threading"])
def test_pairs_for_length_fills_the_context(task):
  rng = np.random.default_rng(1)
  for length in (32, 64, 128):
    n = needle.pairs_for_length(length, task, hops=3, threads=2)
    if n < 6 and task == "multi_threading":
      continue                                              # 2 threads x 3 hops do not fit
    ex = needle.make_haystack(task, n, rng, hops=3, threads=2)
    assert len(ex.text) - 1 <= length < len(ex.text) - 1 + 2 * needle.pair_len(1)


def test_stream_masks_exactly_the_answers_and_is_deterministic():
  stream = needle.HaystackStream(TOK, needle.TaskMix(), 4, 96, seed=3)
  batch = next(stream)
  assert batch["inputs"].shape == batch["targets"].shape == batch["loss_mask"].shape == (4, 96)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  for row, target, mask in zip(batch["inputs"], batch["targets"], batch["loss_mask"]):
    text = bytes(row.tolist()).decode()
    table = dict(p.split(":") for p in text.split("\n")[0].rstrip(",").split(","))
    assert all(v in table for v in table.values())       # every value is a key (threads)
    lines = text.split("\n")[1:-1]                          # whole query lines
    answered = bytes(target[mask > 0].tolist()).decode().split("\n")
    for line, answer in zip(lines, answered):
      query, sep, given = line.partition(">") if ">" in line else line.partition(":")
      assert given == answer
      for start, chain in zip(query.split(","), answer.split(",")):
        key = start
        for hop in chain.split(">"):
          assert table[key] == hop                          # each hop is the next lookup
          key = hop
  again = needle.HaystackStream(TOK, needle.TaskMix(), 4, 96, seed=3)
  np.testing.assert_array_equal(next(again)["inputs"], batch["inputs"])
  state = stream.get_state()
  b2 = next(stream)
  stream.set_state(state)
  np.testing.assert_array_equal(next(stream)["inputs"], b2["inputs"])


def _oracle(corrupt_hop: int | None = None):
  """A perfect 'LM' over byte rows: at an answer position it predicts the next answer byte
  by reading the haystack (optionally wrong at one hop of the first thread)."""
  def fn(tokens):
    B, L = tokens.shape
    logits = np.zeros((B, L, 256), np.float32)
    for b in range(B):
      text = bytes(tokens[b].tolist()).split(b"\0")[0].decode()
      if "\n" not in text:
        continue
      ctx, _, query = text.partition("\n")
      table = dict(p.split(":") for p in ctx.rstrip(",").split(","))
      prompt_end = len(ctx) + 1 + max(query.find(":"), query.find(">"))
      starts = query[:max(query.find(":"), query.find(">"))].split(",")
      hops = 1 if ":" in query else 3
      answer_chars = []
      for t_i, key in enumerate(starts):
        chain = []
        for h in range(hops):
          if key not in table:
            break
          key = table[key]
          wrong = corrupt_hop is not None and t_i == 0 and h == corrupt_hop
          chain.append("#" if wrong else key)
        answer_chars.append(">".join(chain))
      answer = ",".join(answer_chars) + "\n"
      for i, ch in enumerate(answer):
        if prompt_end + i < L:
          logits[b, prompt_end + i, ord(ch)] = 1.0
    return logits
  return fn


def test_exact_match_is_greedy_decoding_and_parts_locate_the_error():
  rng = np.random.default_rng(5)
  exs = [needle.make_haystack("multi_threading", 8, rng, hops=3, threads=2) for _ in range(4)]
  exs += [needle.make_haystack("threading", 8, rng, hops=3) for _ in range(4)]
  ok = needle.token_correct(_oracle(), TOK, exs, 64, batch_size=8)
  assert all(o.all() and len(o) == len(ex.answer) for o, ex in zip(ok, exs))
  bad = needle.token_correct(_oracle(corrupt_hop=1), TOK, exs, 64, batch_size=8)
  assert not any(o.all() for o in bad)
  np.testing.assert_array_equal(needle.exact_match(_oracle(1), TOK, exs, 64, 8), False)
  for ex, o in zip(exs[:4], bad[:4]):
    assert needle.parts_correct(ex, o) == [False, True]     # only the first thread is wrong


def test_baselines():
  rng = np.random.default_rng(2)
  last = needle.make_haystack("single", 10, rng, depth=1.0)
  assert needle.recent_pair_baseline(last)
  ex = needle.Haystack("single", "a:b,b:c,c:b,\n", "a:", "b", 0.0, 13, 1, 3, ("b", "c", "b"))
  assert needle.answer_prior_baseline(ex) and not needle.recent_pair_baseline(
      needle.Haystack("single", "a:c,b:c,c:b,\n", "a:", "c", 0.0, 13, 1, 3, ("c", "c", "b")))
  assert needle.uniform_accuracy(ex) == pytest.approx(1 / 2)
  thread = needle.make_haystack("threading", 10, rng, hops=3)
  assert needle.uniform_accuracy(thread) == pytest.approx(
      (1 / len(set(thread.candidates))) ** 3)


def test_repro_quick(tmp_path):
  from tokenlab import repro
  result = repro.run("needle_threading", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  rows = {(a, m): v for a, m, v, _, _ in result.rows}
  assert 0.0 <= rows[("dense", "single needle exact match")] <= 1.0
  assert rows[("most recent pair", "single, needle within the window")] > 0   # depth 1 cells
  assert (tmp_path / "repro.md").exists() and (tmp_path / "needle_threading.png").exists()
