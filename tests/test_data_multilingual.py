"""The `multilingual` dataset: .po parsing, contents per language, splits, guards, pipeline."""

import numpy as np
import pytest
import wordfreq

from tokenlab import data
from tokenlab.data import config, multilingual as ml, sources
from tokenlab.errors import ConfigError, TokenlabError

PO = r'''# A header comment.
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=2; plural=(n != 1);\n"

#: a.py:1
msgid "Save"
msgstr "Sichern"

#, fuzzy
msgid "Maybe"
msgstr "Vielleicht"

msgctxt "month name"
msgid "May"
msgstr "Mai"
msgid "Say \"hi\"\tnow"
msgstr ""
"Sag \"hallo\"\n"
"jetzt"

msgid "%(n)s item"
msgid_plural "%(n)s items"
msgstr[0] "%(n)s Element"
msgstr[1] "%(n)s Elemente"

#~ msgid "Old"
#~ msgstr "Alt"
'''


def test_parse_po_handles_context_plurals_escapes_fuzzy_and_obsolete():
  entries = ml.parse_po(PO)
  assert [e.msgid for e in entries] == ["", "Save", "Maybe", "May", 'Say "hi"\tnow',
                                        "%(n)s item"]
  by_id = {e.msgid: e for e in entries}
  assert by_id["Save"].msgstr == ("Sichern",) and not by_id["Save"].fuzzy
  assert by_id["Maybe"].fuzzy
  assert by_id["May"].context == "month name" and by_id["May"].msgstr == ("Mai",)
  assert by_id['Say "hi"\tnow'].msgstr == ('Sag "hallo"\njetzt',)  # Continued lines joined.
  plural = by_id["%(n)s item"]
  assert plural.msgid_plural == "%(n)s items"
  assert plural.msgstr == ("%(n)s Element", "%(n)s Elemente")
  assert "Plural-Forms" in entries[0].msgstr[0]
  with pytest.raises(TokenlabError, match="line 2"):
    ml.parse_po('msgid "a"\nmsgstrr "b"\n')


def test_languages_need_all_three_sources():
  langs = ml.languages()
  assert {"de", "fr", "ja", "ru", "en"} <= set(langs) and len(langs) >= 30
  # Django has catalogs for eo and zh_Hans, but wordfreq has no 'eo' list and names
  # Chinese 'zh': neither is a language here.
  assert "eo" in ml._catalog_index() and "eo" not in langs and "zh_Hans" not in langs


def test_german_pairs_dictionary_and_corpus():
  pairs = ml.parallel_pairs("de")
  django = [r for r in ml.records(ml._options("de", "parallel", 10), None)
            if r["origin"].startswith("django:")]
  assert len(django) >= 800  # Django's catalogs alone; CLDR names come on top.
  assert len(pairs) == len(set(pairs)) >= 2000
  for pair in [("Log out", "Abmelden"), ("Delete", "Löschen"),
               ("%(count)s %(name)s was changed successfully.",
                "%(count)s %(name)s wurde erfolgreich geändert."),  # Plural entry: form 0...
               ("%(count)s %(name)s were changed successfully.",
                "%(count)s %(name)s wurden erfolgreich geändert."),  # ...and form 1.
               ("Central European Summer Time", "Mitteleuropäische Sommerzeit")]:
    assert pair in pairs, pair
  words = ml.dictionary("de")
  for pair in [("Germany", "Deutschland"), ("January", "Januar"), ("March", "März"),
               ("Monday", "Montag"), ("German", "Deutsch"), ("Delete", "Löschen")]:
    assert pair in words, pair
  assert ("Log out", "Abmelden") not in words  # Two English words: not a dictionary entry.
  assert set(words) <= set(pairs) and len(words) >= 800
  assert all(ml.is_word(en) and ml.is_word(de) for en, de in words)
  corpus = ml.monolingual("de")
  assert len(corpus) == len(set(corpus)) >= 2000
  assert {"Deutschland", "Abmelden", "Montag"} <= set(corpus)
  for text in [s for p in pairs for s in p] + corpus:
    assert text and text == text.strip() and "\t" not in text and "\n" not in text


@pytest.mark.parametrize("lang", ["fr", "ja", "ru"])
def test_other_languages_have_pairs_words_and_text(lang):
  django = {r["text"] for r in ml.records(ml._options(lang, "parallel", 10), None)
            if r["origin"].startswith("django:")}
  assert len(django) >= 700
  assert len(ml.dictionary(lang)) >= 500 and len(ml.monolingual(lang)) >= 2000
  assert ("Germany", ml._cldr(lang)[("territories", "DE")][0]) in ml.dictionary(lang)


def test_english_corpus_is_the_source_side():
  corpus = ml.monolingual("en")
  assert {"Log out", "Germany", "January"} <= set(corpus) and len(corpus) >= 2000
  with pytest.raises(ConfigError, match="not 'en'"):
    ml.parallel_pairs("en")


def test_splits_disjoint_complete_deterministic_and_consistent_across_kinds():
  for kind in ("parallel", "dictionary", "monolingual", "words"):
    opts = ml._options("de", kind, 10)
    train, val = ml.records(opts, "train"), ml.records(opts, "validation")
    every = ml.records(opts, None)
    keys = lambda recs: {r["text"] for r in recs}  # pylint: disable=unnecessary-lambda-assignment
    assert not keys(train) & keys(val) and keys(train) | keys(val) == keys(every)
    assert len(train) + len(val) == len(every)
    assert 0.05 < len(val) / len(every) < 0.15, kind
  first = ml.parallel_pairs("de", "validation")
  ml._all_records.cache_clear()
  ml._django.cache_clear()
  ml._cldr.cache_clear()
  assert ml.parallel_pairs("de", "validation") == first  # Recomputed from the packages.
  # A held-out German string is held out in every kind.
  held_out = {de for _, de in first}
  assert not held_out & set(ml.monolingual("de", "train"))
  assert not held_out & {de for _, de in ml.dictionary("de", "train")}
  assert held_out & set(ml.monolingual("de", "validation"))


def test_unknown_language_and_bad_options_raise_config_errors():
  cfg = data.default_data_config("multilingual")
  cfg.options.lang = "xx"
  with pytest.raises(ConfigError, match="one of: ar, bg, .*de, .*ja, "):
    config.resolve(cfg)
  cfg.options.lang = "eo"  # Django has it, wordfreq would answer with English.
  with pytest.raises(ConfigError, match="de, el"):
    config.resolve(cfg)
  cfg.options.lang, cfg.options.kind = "de", "sentences"
  with pytest.raises(ConfigError, match="monolingual, parallel, dictionary, words"):
    config.resolve(cfg)
  cfg.options.kind, cfg.options.validation_percent = "parallel", 0
  with pytest.raises(ConfigError, match="validation_percent"):
    config.resolve(cfg)
  with pytest.raises(ConfigError, match="unknown split"):
    ml.dictionary("de", "test")


def test_wordfreq_fallback_is_guarded():
  # The trap: wordfreq answers an unknown code with the nearest language it has.
  assert wordfreq.top_n_list("eo", 5) == wordfreq.top_n_list("en", 5)
  with pytest.raises(ConfigError, match="silently"):
    ml.words("eo")
  with pytest.raises(ConfigError, match="ar, bg"):
    ml.words("de_AT")
  top = ml.words("de", 200)
  assert top[:3] == ["die", "der", "und"] and "the" not in top and len(top) == 200
  assert len(ml.words("ja", 300)) == 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("multilingual_data")


def test_parallel_batches_through_the_pipeline(data_dir):
  cfg = data.default_data_config("multilingual")
  cfg.data_dir = str(data_dir)
  cfg.options.kind = "parallel"
  cfg.seq_len = 128
  resolved = config.resolve(cfg)
  src = sources.data_source(resolved, "validation")
  stored = [(bytes(src[i]["en"]).decode(), bytes(src[i]["target"]).decode())
            for i in range(len(src))]
  # tfds stores records in the order of a hash of their keys: the same pairs, reordered.
  assert sorted(stored) == sorted(ml.parallel_pairs("de", "validation"))
  batches = list(data.make_iterator(cfg, split="validation", batch_size=8, seed=0,
                                    shuffle=False, num_epochs=1))
  assert batches[0]["inputs"].shape == (8, 128)
  targets = np.concatenate([b["targets"][b["loss_mask"] > 0] for b in batches])
  # Every document is 'English<TAB>German'; its first byte is context only.
  docs = [f"{en}\t{de}".encode()[1:] for en, de in stored]
  assert targets.astype(np.uint8).tobytes() == b"".join(docs)
  train = list(data.make_iterator(cfg, split="train", batch_size=4, seed=1, num_epochs=1))
  assert sum(b["loss_mask"].sum() for b in train) > 50_000
