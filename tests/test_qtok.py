"""Qtok (tokenlab.evals.tokenizer_report, tokenlab.methods.qtok): the report's metrics on
hand-made tokenizers and texts where every number is known, the mixes, the count baseline,
`tokenlab tokenizer-report`, and the quick reproduction. No training, no jax: seconds."""

import json

import numpy as np
import pytest

from tokenlab.data.tokenizers import BPETokenizer, BytesTokenizer
from tokenlab.data.tokenizers.lzw import LZWTokenizer
from tokenlab.errors import TokenlabError
from tokenlab.evals import tokenizer_report as tr
from tokenlab.methods import qtok

BYTES256 = [bytes([b]) for b in range(256)]


def test_script_of_characters_and_strings():
  for c, script in (("a", "Latin"), ("é", "Latin"), ("ж", "Cyrillic"), ("λ", "Greek"),
                    ("ب", "Arabic"), ("語", "Han"), ("の", "Kana"), ("カ", "Kana"), ("ー", "Kana"),
                    ("한", "Hangul"), ("क", "Devanagari"), ("1", "Common"), (" ", "Common"),
                    ("-", "Common"), ("\u0301", "Inherited")):
    assert tr.char_script(c) == script, c
  assert tr.text_script("Moskva") == "Latin"
  assert tr.text_script("Москва 2") == "Cyrillic"
  assert tr.text_script("Mоskva") == "Mixed"          # a Cyrillic 'о' inside a Latin word
  assert tr.text_script("e\u0301") == "Latin"          # a mark takes its letter's script
  assert tr.text_script("12 -") == "Common"
  assert tr.dominant_script(["日本語のテキスト", "abc"]) in ("Han", "Kana")
  assert tr.dominant_script(["Привет мир", "ok"]) == "Cyrillic"


def test_classify_token_categories_and_completeness():
  c = tr.classify_token
  assert c(" мир".encode()) == tr.TokenInfo(" мир".encode(), True, "word", "Cyrillic", True,
                                            "мир")
  assert c(b"\xd0").category == "partial UTF-8" and not c(b"\xd0").valid_utf8
  assert c(b"\xd0").script == "-"
  assert c("ж".encode()[:1] + b"").script == "-"
  part = "aж".encode()[:2]                              # 'a' + half of 'ж'
  assert c(part).category == "partial UTF-8" and c(part).script == "Latin"
  assert c(b"42").category == "number" and c(b" 42").word_start
  assert c(b"%(").category == "punctuation"
  assert c(b"+").category == "symbol"
  assert c(b"  ").category == "space" and not c(b" ").word_start
  assert c(b"s)").category == "mixed" and c(b"s)").script == "Latin"
  assert c(b"").category == "control"


def test_vocabulary_report_of_bytes_is_exact():
  v = tr.vocabulary_report(BytesTokenizer(), {"a": 3, "I": 1, "zz": 1})
  assert v["vocab_size"] == 256 and v["valid_utf8"] == 128
  assert v["by_category"]["partial UTF-8"] == 128
  assert v["by_category"]["word"] == 52 and v["by_category"]["number"] == 10
  assert v["by_script"] == {"Latin": 52}
  assert v["whole_words"] == 2                          # 'a' and 'I' are corpus words
  assert v["length_bytes_hist"][0] == 256 and sum(v["length_bytes_hist"]) == 256
  assert v["mean_bytes"] == 1.0 and v["max_bytes"] == 1 and v["word_start"] == 0


def test_corpus_report_counts_by_hand():
  tok = LZWTokenizer(BYTES256 + [b" cat", b"dog"])
  # 'dog cat' -> [dog][ cat]; 'cat' -> [c][a][t]: 5 tokens, 3 words, 10 bytes.
  m = tr.corpus_report(tok, ["dog cat", "cat"])
  assert (m["tokens"], m["words"], m["bytes"], m["chars"]) == (5, 3, 10, 10)
  assert m["fertility"] == pytest.approx(5 / 3) and m["bytes_per_token"] == 2.0
  # ' cat' is one token (2 of 3 word occurrences); ' dog' is [ ][dog].
  assert m["one_token_words"] == pytest.approx(2 / 3)
  assert m["vocab_used"] == pytest.approx(5 / 258) and m["unencodable"] == 0.0


def test_unencodable_documents_are_counted_not_fatal():
  tok = LZWTokenizer([b"a", b"b", b" ", b"ab"])
  m = tr.corpus_report(tok, ["ab ab", "abc", "b"])
  assert m["unencodable"] == pytest.approx(1 / 3)
  assert (m["tokens"], m["bytes"]) == (4, 6)            # [ab][ ][ab] and [b]


def test_report_and_markdown_of_several_tokenizers():
  bpe = BPETokenizer.train([b"the cat the cat the dog"] * 3, 260)
  corpus = {"en": ["the cat", "the dog"], "ru": ["кот"]}
  reps = [tr.report(BytesTokenizer(), corpus, "bytes"), tr.report(bpe, corpus, "bpe")]
  assert reps[0]["languages"]["ru"]["script"] == "Cyrillic"
  assert reps[0]["languages"]["ru"]["bytes_per_token"] == 1.0
  assert reps[1]["languages"]["en"]["bytes_per_token"] > 1.0
  md = tr.markdown(reps)
  assert "| vocabulary size | 256 | 260 |" in md and "| ru | Cyrillic | 1 |" in md


def test_mixes_have_the_budgets_and_differ_by_seed():
  skewed, balanced = qtok.mix_budgets(["en", "ru", "ja"], "en", 0.9, 1000)
  assert skewed == {"en": 900, "ru": 50, "ja": 50} and balanced == {"en": 333, "ru": 333,
                                                                     "ja": 333}
  corpus = {"en": [f"word{i} " * 3 for i in range(200)], "ru": ["слово"] * 200,
            "ja": ["日本"] * 200}
  a = qtok.skewed_and_balanced_mixes(corpus, "en", 0.9, 1000, seed=0)
  b = qtok.skewed_and_balanced_mixes(corpus, "en", 0.9, 1000, seed=1)
  en_bytes = lambda docs: sum(len(d) for d in docs if d.startswith(b"word"))
  assert 900 <= en_bytes(a[0]) < 900 + 25 and 333 <= en_bytes(a[1]) < 333 + 25
  assert sum(len(d) for d in a[1] if d == "слово".encode()) >= 333
  assert a != b and a == qtok.skewed_and_balanced_mixes(corpus, "en", 0.9, 1000, seed=0)


def test_count_vocabulary_keeps_the_biggest_savings_and_is_lossless():
  docs = ["the cat and the dog and the cat".encode(), "кот и кот".encode()]
  tok = qtok.count_vocabulary(docs, 260)
  assert tok.vocab_size == 260
  extra = tok.pieces[256:]
  # Bytes saved: ' the', ' cat', ' and' 2 x 3 = 6 each, ' кот' 1 x 6 = 6; 'кот' (a document's
  # first chunk, 6 bytes) 5; ' dog' 3; 'к' 2 x 1: the four kept are the four 6s.
  assert set(extra) == {b" the", b" cat", b" and", " кот".encode()}
  for d in docs + ["новое слово".encode()]:
    assert tok.decode(tok.encode(d)) == d


def test_script_gap_and_vocab_share():
  lang = lambda bpt, fert: {"bytes_per_token": bpt, "fertility": fert}
  skewed = {"languages": {"ru": lang(1.0, 4.0), "ja": lang(2.0, 3.0)}}
  balanced = {"languages": {"ru": lang(2.0, 2.0), "ja": lang(1.0, 3.0)}}
  gap = qtok.script_gap(skewed, balanced, ["ru", "ja"])
  assert gap == {"bytes_per_token_ratio": 1.25, "fertility_ratio": 1.5, "langs_worse": 1.0}
  assert qtok.non_latin_share({"vocab_size": 10, "by_script": {"Latin": 5, "Cyrillic": 2,
                                                                "Mixed": 1}}) == 0.3


def test_load_tokenizer_forms(tmp_path):
  assert isinstance(tr.load_tokenizer("bytes"), BytesTokenizer)
  bpe = BPETokenizer.train([b"abab abab"], 260)
  (tmp_path / "t.json").write_text(bpe.to_json())
  assert tr.load_tokenizer(str(tmp_path / "t.json")).merges == bpe.merges
  from tokenlab.config import load_config, to_json
  run = tmp_path / "run"
  run.mkdir()
  config = load_config("experiments/qtok.py:size=tiny")
  config.data.tokenizer, config.data.vocab_size = "bytes", 256
  (run / "config.json").write_text(to_json(config))
  assert isinstance(tr.load_tokenizer(str(run)), BytesTokenizer)   # a run's tokenizer
  for bad in ("bpe", "wordpiece:100", "bpe:x@en"):
    with pytest.raises(TokenlabError, match="KIND:VOCAB"):
      tr.load_tokenizer(bad)


def test_cli_writes_table_json_and_png(tmp_path, capsys):
  from tokenlab.cli import main
  corpus = tmp_path / "mine.txt"
  corpus.write_text("the cat sat\nкот сидел\n\n", encoding="utf-8")
  (tmp_path / "t.json").write_text(BPETokenizer.train([b"the cat sat"] * 4, 262).to_json())
  out = tmp_path / "out"
  assert main(["tokenizer-report", "bytes", str(tmp_path / "t.json"), "--corpus", str(corpus),
               "--out", str(out)]) == 0
  assert "| mine |" in capsys.readouterr().out
  reps = json.loads((out / "report.json").read_text())
  assert [r["vocabulary"]["vocab_size"] for r in reps] == [256, 262]
  assert reps[0]["languages"]["mine"]["words"] == 5 and (out / "report.png").stat().st_size
  assert main(["tokenizer-report", "bytes", "--corpus", str(tmp_path / "nope.txt")]) == 2


def test_repro_quick(tmp_path):
  from tokenlab import repro
  report = repro.run("qtok", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "qtok_per_language.png").exists()
  assert "| bpe balanced |" in (tmp_path / "tokenizer_report_seed0.md").read_text()
  rows = {(a, m): v for a, m, v, _, _ in report.rows}
  assert rows[("bytes", "bytes/token (all langs)")] == 1.0
  assert rows[("bpe balanced", "bytes/token (all langs)")] > 1.0
  assert 0 < rows[("skewed/balanced", "bytes/token ratio (non-Latin)")] < 2
  # The non-Latin languages come from the held-out text's own script: ru and ja of en,de,ru,ja.
  assert "ru, ja" in report.notes
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {"compression_gap", "vocab_share"} <= {c["name"] for c in data["checks"]}
