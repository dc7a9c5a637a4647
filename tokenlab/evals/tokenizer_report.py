"""Tokenizer quality reports in the manner of Qtok (Chelombitko et al., arXiv 2410.12989).

`tokenlab tokenizer-report TOKENIZER... [--corpus CORPUS]` judges any tokenlab tokenizer on
two levels, as Qtok does:

1. Its vocabulary alone (`vocabulary_report`): size; every token classified by UTF-8 validity
   (a byte-level token may hold half a character), Unicode category of its text (word =
   letters and marks only, number, punctuation, symbol, space, mixed, partial UTF-8, control)
   and Unicode script of its letters (Latin, Cyrillic, Greek, Arabic, Han, Kana, Hangul, ...;
   'Mixed' when letters of two scripts meet in one token); word-start tokens (a leading
   space); token completeness: tokens that are whole words of the corpus (the core, one
   leading space stripped, is a word the corpus contains); the length distribution in bytes
   and characters.
2. Its behaviour on text, per language (`corpus_report`): fertility (tokens per whitespace
   word), compression (UTF-8 bytes per token, and characters per token), the share of the
   corpus's word occurrences that are one token (' ' + word), the share of the vocabulary the
   language uses, and the documents the tokenizer cannot encode (a SentencePiece model
   without byte fallback, an LZW dictionary without the byte).

TOKENIZER is a spec (`load_tokenizer`): 'bytes'; KIND:VOCAB[@LANG] with KIND bpe,
sentencepiece, lzw or lib (LiB), trained on the train split of the `multilingual` dataset's
monolingual text of LANG (default en; bpe/sentencepiece/lib are cached like any pipeline
tokenizer); a run directory (the tokenizer of `tokenlab train`'s run, from its config.json);
or a tokenizer file (a tokenlab BPE or LiB .json, a SentencePiece .model). CORPUS is
multilingual[:L1,L2,...] (the held-out strings of those languages; default: all 39) or a
UTF-8 text file (one document per line).

Follows Qtok: the vocabulary-level categories (Unicode category, script, completeness, token
length) and the per-language view. Different: Qtok reads Hugging Face vocabularies of public
LLMs; here the tokenizers are tokenlab's own, so the per-language text metrics (fertility,
compression) that Qtok's paper discusses from the literature are measured directly on the
multilingual data. Python has no Unicode Script property: the script of a letter is read
from its Unicode name ('CYRILLIC SMALL LETTER A' -> Cyrillic; CJK ideographs -> Han;
Hiragana/Katakana -> Kana); combining marks count as their letters' script only when named
so (Devanagari vowel signs) and otherwise as 'Inherited'. Words are whitespace-separated
chunks, so the fertility of a language written without spaces (ja) is per chunk, not per
word: compare it across tokenizers, not across languages.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tokenlab.data.tokenizers import Tokenizer
from tokenlab.errors import TokenlabError

CATEGORIES = ("word", "number", "punctuation", "symbol", "space", "mixed", "partial UTF-8",
              "control")
MAX_LEN_BIN = 16   # the length histogram's last bin holds every longer token
_NAME_SCRIPT = {"CJK": "Han", "IDEOGRAPHIC": "Han", "KANGXI": "Han", "HIRAGANA": "Kana",
                "KATAKANA": "Kana", "KATAKANA-HIRAGANA": "Kana", "COMBINING": "Inherited",
                "MODIFIER": "Common"}


# --- characters and tokens ----------------------------------------------------------------

@functools.lru_cache(maxsize=1 << 16)
def char_script(c: str) -> str:
  """The Unicode script of a letter or mark, from its name; 'Common' for anything else.

  'a' -> 'Latin', 'ж' -> 'Cyrillic', 'ا' -> 'Arabic', '語' -> 'Han', 'の' -> 'Kana',
  '한' -> 'Hangul', '1' / '-' / ' ' -> 'Common', U+0301 (combining acute) -> 'Inherited'.
  """
  if not unicodedata.category(c)[0] in "LM":
    return "Common"
  words = unicodedata.name(c, "").split()
  if not words:
    return "Common"
  if words[0] in ("HALFWIDTH", "FULLWIDTH") and len(words) > 1:
    words = words[1:]
  first = words[0]
  if first.startswith("HANGUL"):
    return "Hangul"
  return _NAME_SCRIPT.get(first, first.capitalize())


def text_script(text: str) -> str:
  """The script of a string's letters: one script, 'Mixed' (several) or 'Common' (none).

  'Inherited' marks take their letters' script (they add none of their own).
  """
  scripts = {char_script(c) for c in text} - {"Common", "Inherited"}
  if not scripts:
    return "Inherited" if any(char_script(c) == "Inherited" for c in text) else "Common"
  return scripts.pop() if len(scripts) == 1 else "Mixed"


def _is_letter(c: str) -> bool:
  return unicodedata.category(c)[0] in "LM"


@dataclasses.dataclass(frozen=True)
class TokenInfo:
  """What one vocabulary entry is (see the module docstring).

  Attributes:
    piece: the token's bytes.
    valid_utf8: the bytes decode as UTF-8 (a byte-level token may hold part of a character).
    category: one of CATEGORIES.
    script: the script of its letters ('Common' without letters; of the decodable part for a
      partial token, '-' when nothing decodes).
    word_start: begins with a space followed by something else.
    core: the text without one leading space ('' for partial/control tokens).
  """
  piece: bytes
  valid_utf8: bool
  category: str
  script: str
  word_start: bool
  core: str


def classify_token(piece: bytes) -> TokenInfo:
  """Classifies one token's bytes (see TokenInfo)."""
  if not piece:
    return TokenInfo(piece, True, "control", "-", False, "")
  try:
    text = piece.decode("utf-8")
  except UnicodeDecodeError:
    part = piece.decode("utf-8", errors="ignore")
    script = text_script(part) if any(map(_is_letter, part)) else "-"
    return TokenInfo(piece, False, "partial UTF-8", script, False, "")
  word_start = text.startswith(" ") and len(text) > 1
  core = text[1:] if word_start else text
  if not core.strip():
    category = "space"
  elif all(map(_is_letter, core)):
    category = "word"
  elif all(unicodedata.category(c) == "Nd" for c in core):
    category = "number"
  elif all(unicodedata.category(c)[0] == "P" for c in core):
    category = "punctuation"
  elif all(unicodedata.category(c)[0] == "S" for c in core):
    category = "symbol"
  else:
    category = "mixed"
  return TokenInfo(piece, True, category, text_script(core), word_start, core)


def vocabulary(tok: Tokenizer) -> list[TokenInfo]:
  """TokenInfo of every id, in id order (vocab_size,)."""
  return [classify_token(tok.token_bytes(i)) for i in range(tok.vocab_size)]


def corpus_words(texts: Sequence[str]) -> collections.Counter:
  """Counts of the whitespace-separated chunks of `texts` that are words (letters and marks,
  inner hyphens/apostrophes: `multilingual.is_word`), with surrounding punctuation stripped."""
  from tokenlab.data.multilingual import is_word  # pylint: disable=g-import-not-at-top
  out: collections.Counter = collections.Counter()
  for t in texts:
    for chunk in t.split():
      w = chunk.strip("\"'()[]{}.,;:!?«»“”„‘’¿¡…、。，：；！？「」『』（）·-")
      if is_word(w):
        out[w] += 1
  return out


# --- the two levels of a report --------------------------------------------------------------

def vocabulary_report(tok: Tokenizer, words: Mapping[str, int] | None = None
                      ) -> dict[str, Any]:
  """Vocabulary-level metrics of `tok` (see the module docstring).

  Args:
    tok: any tokenlab tokenizer.
    words: words of a corpus (e.g. `corpus_words`); tokens whose core is one of them count
      as whole words. None: the whole-word count is left out.

  Returns:
    {'vocab_size', 'by_category': {category: count}, 'by_script': {script: count} (tokens
    with letters, including partial ones that decode a letter), 'valid_utf8', 'word_start',
    'whole_words', 'length_bytes_hist' (MAX_LEN_BIN counts: 1, 2, ..., >= MAX_LEN_BIN
    bytes), 'mean_bytes', 'mean_chars' (valid tokens), 'max_bytes'}; counts are ints.
  """
  infos = vocabulary(tok)
  real = [t for t in infos if t.category != "control"]
  by_cat = collections.Counter(t.category for t in infos)
  by_script = collections.Counter(t.script for t in infos if t.script not in ("-", "Common"))
  lengths = np.array([len(t.piece) for t in real], np.int64)
  hist = np.bincount(np.clip(lengths, 1, MAX_LEN_BIN) - 1, minlength=MAX_LEN_BIN)
  valid = [t for t in real if t.valid_utf8]
  out = {"vocab_size": int(tok.vocab_size),
         "by_category": {c: int(by_cat.get(c, 0)) for c in CATEGORIES},
         "by_script": dict(sorted(((s, int(n)) for s, n in by_script.items()),
                                  key=lambda x: -x[1])),
         "valid_utf8": len(valid), "word_start": sum(t.word_start for t in real),
         "length_bytes_hist": [int(x) for x in hist],
         "mean_bytes": float(lengths.mean()) if len(lengths) else 0.0,
         "mean_chars": float(np.mean([len(t.piece.decode()) for t in valid])) if valid else 0.0,
         "max_bytes": int(lengths.max()) if len(lengths) else 0}
  if words is not None:
    out["whole_words"] = sum(t.category == "word" and t.core in words for t in real)
  return out


def _encode_all(tok: Tokenizer, docs: Sequence[bytes]) -> tuple[list[np.ndarray], int]:
  """Encodes `docs`; returns (token arrays of the encodable ones, number that failed)."""
  try:
    return tok.encode_batch(docs), 0
  except (TokenlabError, UnicodeDecodeError):
    pass
  out, failed = [], 0
  for d in docs:
    try:
      out.append(tok.encode(d))
    except (TokenlabError, UnicodeDecodeError):
      failed += 1
  return out, failed


def corpus_report(tok: Tokenizer, texts: Sequence[str]) -> dict[str, float]:
  """Text-level metrics of `tok` on one language's documents.

  Args:
    tok: any tokenlab tokenizer.
    texts: the documents (str).

  Returns:
    {'docs', 'unencodable' (fraction of documents), 'tokens', 'bytes', 'chars', 'words',
    'fertility' (tokens per whitespace chunk), 'bytes_per_token', 'chars_per_token',
    'one_token_words' (share of word occurrences that ' ' + word encodes as one token),
    'vocab_used' (share of the vocabulary in the tokenized text)}; counts over the
    encodable documents.
  """
  ids, failed = _encode_all(tok, [t.encode("utf-8") for t in texts])
  ok = list(texts) if not failed else [t for t in texts if _encodable(tok, t)]
  tokens = int(sum(len(x) for x in ids))
  nbytes = sum(len(t.encode("utf-8")) for t in ok)
  chars = sum(len(t) for t in ok)
  chunks = sum(len(t.split()) for t in ok)
  words = corpus_words(ok)
  distinct = list(words)
  word_ids, _ = _encode_all(tok, [(" " + w).encode("utf-8") for w in distinct])
  single = (sum(words[w] for w, x in zip(distinct, word_ids) if len(x) == 1)
            if len(word_ids) == len(distinct) else 0)
  used = len(np.unique(np.concatenate(ids))) if tokens else 0
  return {"docs": len(texts), "unencodable": failed / max(len(texts), 1), "tokens": tokens,
          "bytes": nbytes, "chars": chars, "words": chunks,
          "fertility": tokens / max(chunks, 1), "bytes_per_token": nbytes / max(tokens, 1),
          "chars_per_token": chars / max(tokens, 1),
          "one_token_words": single / max(sum(words.values()), 1),
          "vocab_used": used / tok.vocab_size}


def _encodable(tok: Tokenizer, text: str) -> bool:
  try:
    tok.encode(text.encode("utf-8"))
    return True
  except (TokenlabError, UnicodeDecodeError):
    return False


def dominant_script(texts: Sequence[str]) -> str:
  """The script most letters of `texts` are written in ('Common' when there are none)."""
  counts = collections.Counter(char_script(c) for t in texts for c in t if _is_letter(c))
  counts.pop("Inherited", None)
  return counts.most_common(1)[0][0] if counts else "Common"


def report(tok: Tokenizer, corpus: Mapping[str, Sequence[str]], name: str = "") -> dict:
  """The full report of one tokenizer on a corpus {language (or file name): documents}.

  Returns:
    {'name', 'vocabulary': vocabulary_report (whole words against the corpus's words),
    'languages': {lang: corpus_report + {'script': dominant script}}}.
  """
  words: collections.Counter = collections.Counter()
  for texts in corpus.values():
    words.update(corpus_words(texts))
  return {"name": name or type(tok).__name__,
          "vocabulary": vocabulary_report(tok, words),
          "languages": {lang: {**corpus_report(tok, texts), "script": dominant_script(texts)}
                        for lang, texts in corpus.items()}}


# --- loading tokenizers and corpora -----------------------------------------------------------

KINDS = ("bpe", "sentencepiece", "lzw", "lib")


def multilingual_data_config(kind: str, vocab_size: int, lang: str = "en"):
  """The data config of the `multilingual` monolingual text of `lang` with a tokenizer."""
  from tokenlab.data import default_data_config  # pylint: disable=g-import-not-at-top
  cfg = default_data_config("multilingual")
  cfg.options.lang, cfg.options.kind = lang, "monolingual"
  cfg.tokenizer, cfg.vocab_size = kind, vocab_size
  return cfg


def load_tokenizer(spec: str) -> Tokenizer:
  """The tokenizer a TOKENIZER argument names (see the module docstring).

  Raises:
    TokenlabError: a spec that is none of the forms, naming them.
  """
  import re  # pylint: disable=g-import-not-at-top
  from tokenlab.data import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenlab.data.tokenizers.lzw import LZWTokenizer  # pylint: disable=g-import-not-at-top
  if spec == "bytes":
    return tokenizers.BytesTokenizer()
  if os.path.isdir(spec):
    from tokenlab.train.inference import (  # pylint: disable=g-import-not-at-top
        load_config_from_workdir)
    return tokenizers.get_tokenizer(load_config_from_workdir(spec).data)
  if os.path.isfile(spec):
    with open(spec, "rb") as f:
      blob = f.read()
    if spec.endswith(".json"):
      if json.loads(blob).get("type") == "lib":
        return tokenizers.LiBTokenizer.from_json(blob.decode())
      return tokenizers.BPETokenizer.from_json(blob.decode())
    if spec.endswith(".model"):
      return tokenizers.SentencePieceTokenizer(blob)
    raise TokenlabError(f"{spec}: a tokenizer file must be a tokenlab BPE or LiB .json or a "
                        "SentencePiece .model")
  m = re.fullmatch(r"(?P<kind>[a-z]+):(?P<vocab>\d+)(?:@(?P<lang>[a-z]+))?", spec)
  if not m or m.group("kind") not in KINDS:
    raise TokenlabError(f"tokenizer '{spec}': write bytes, KIND:VOCAB[@LANG] with KIND one of "
                        f"{', '.join(KINDS)} (e.g. bpe:1024@ru), a run directory, or a "
                        "tokenizer file (.json BPE, .model SentencePiece)")
  cfg = multilingual_data_config(m.group("kind"), int(m.group("vocab")), m.group("lang") or "en")
  if m.group("kind") != "lzw":
    return tokenizers.get_tokenizer(cfg)
  cfg.tokenizer, cfg.vocab_size = "bytes", 256   # lzw is not a pipeline tokenizer: train here
  from tokenlab.data import config as data_config  # pylint: disable=g-import-not-at-top
  return LZWTokenizer.train(tokenizers.train_documents(data_config.resolve(cfg)),
                            int(m.group("vocab")))


def load_corpus(spec: str, split: str = "validation", max_docs: int = 0
                ) -> dict[str, list[str]]:
  """{language or file name: documents} of a CORPUS argument (see the module docstring).

  Args:
    spec: 'multilingual', 'multilingual:L1,L2,...', or a UTF-8 text file (a line per doc).
    split: the multilingual split ('validation' = strings no tokenizer here trained on).
    max_docs: at most this many documents per language (the first ones; 0 = all).
  """
  from tokenlab.data import multilingual  # pylint: disable=g-import-not-at-top
  cut = (lambda xs: xs[:max_docs]) if max_docs > 0 else (lambda xs: xs)
  if spec == "multilingual" or spec.startswith("multilingual:"):
    langs = spec.partition(":")[2]
    langs = [l.strip() for l in langs.split(",") if l.strip()] or list(
        multilingual.languages())
    return {lang: cut(multilingual.monolingual(lang, split)) for lang in langs}
  if not os.path.isfile(spec):
    raise TokenlabError(f"--corpus {spec}: give multilingual, multilingual:de,ru,ja or a text "
                        "file (one document per line)")
  with open(spec, encoding="utf-8") as f:
    docs = [line.rstrip("\n") for line in f if line.strip()]
  return {os.path.splitext(os.path.basename(spec))[0]: cut(docs)}


# --- output ---------------------------------------------------------------------------------

def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(reports: Sequence[dict]) -> str:
  """Tables of one or more reports side by side: vocabulary, scripts, then per language."""
  names = [r["name"] for r in reports]
  voc = [r["vocabulary"] for r in reports]
  rows = [["vocabulary size"] + [str(v["vocab_size"]) for v in voc],
          ["valid UTF-8 tokens"] + [f"{v['valid_utf8']} ({v['valid_utf8'] / v['vocab_size']:.0%})"
                                    for v in voc],
          ["word-start tokens"] + [str(v["word_start"]) for v in voc]]
  if all("whole_words" in v for v in voc):
    rows.append(["whole-word tokens (corpus words)"] + [str(v["whole_words"]) for v in voc])
  rows += [[f"category: {c}"] + [str(v["by_category"][c]) for v in voc] for c in CATEGORIES]
  rows += [["mean token bytes / chars"] + [f"{v['mean_bytes']:.2f} / {v['mean_chars']:.2f}"
                                           for v in voc],
           ["longest token (bytes)"] + [str(v["max_bytes"]) for v in voc]]
  scripts = list(dict.fromkeys(s for v in voc for s in v["by_script"]))
  rows += [[f"script: {s}"] + [str(v["by_script"].get(s, 0)) for v in voc] for s in scripts]
  out = ["Vocabulary (token counts):", "", _table(["", *names], rows), ""]
  langs = list(reports[0]["languages"])
  metrics = (("fertility", "tokens/word", "{:.2f}"), ("bytes_per_token", "bytes/token", "{:.2f}"),
             ("one_token_words", "1-token words", "{:.0%}"), ("unencodable", "unencodable",
                                                               "{:.0%}"))
  head = ["lang", "script", "words"] + [f"{n}: {label}" for n in names for _, label, _ in metrics]
  lrows = []
  for lang in langs:
    first = reports[0]["languages"][lang]
    cells = [lang, first["script"], str(first["words"])]
    for r in reports:
      m = r["languages"][lang]
      cells += [fmt.format(m[key]) for key, _, fmt in metrics]
    lrows.append(cells)
  out += ["Per language (held-out text):", "", _table(head, lrows)]
  return "\n".join(out) + "\n"


def plot(reports: Sequence[dict], path: str) -> str:
  """One PNG: vocabulary by script, token length histogram, fertility and bytes/token per
  language, one bar (or line) per tokenizer. Returns `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
  width = 0.8 / len(reports)
  scripts = list(dict.fromkeys(s for r in reports for s in r["vocabulary"]["by_script"]))[:12]
  langs = list(reports[0]["languages"])
  for i, r in enumerate(reports):
    v = r["vocabulary"]
    x = np.arange(len(scripts)) + i * width
    axes[0, 0].bar(x, [v["by_script"].get(s, 0) for s in scripts], width, label=r["name"])
    hist = np.asarray(v["length_bytes_hist"], float)
    axes[0, 1].plot(np.arange(1, MAX_LEN_BIN + 1), hist / max(hist.sum(), 1), "o-", ms=3,
                    label=r["name"])
    xl = np.arange(len(langs)) + i * width
    axes[1, 0].bar(xl, [r["languages"][l]["fertility"] for l in langs], width, label=r["name"])
    axes[1, 1].bar(xl, [r["languages"][l]["bytes_per_token"] for l in langs], width,
                   label=r["name"])
  axes[0, 0].set_xticks(np.arange(len(scripts)) + 0.4 - width / 2, scripts, rotation=45,
                        fontsize=7)
  axes[0, 0].set_ylabel("tokens")
  axes[0, 0].set_title("vocabulary by script of its letters", fontsize=9)
  axes[0, 1].set_xlabel(f"token length in bytes (last bin: >= {MAX_LEN_BIN})")
  axes[0, 1].set_ylabel("share of vocabulary")
  axes[0, 1].set_title("token length distribution", fontsize=9)
  for ax, title in ((axes[1, 0], "fertility: tokens per word (lower is better)"),
                    (axes[1, 1], "compression: UTF-8 bytes per token (higher is better)")):
    ax.set_xticks(np.arange(len(langs)) + 0.4 - width / 2, langs, rotation=90, fontsize=7)
    ax.set_title(title, fontsize=9)
  for ax in axes.flat:
    ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write(reports: Sequence[dict], out_dir: str) -> tuple[str, str, str]:
  """Writes OUT/report.md, report.json and report.png; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  md, js = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.json")
  with open(md, "w") as f:
    f.write("# Tokenizer report\n\n" + markdown(reports))
  with open(js, "w") as f:
    json.dump(list(reports), f, indent=1, ensure_ascii=False)
  return md, js, plot(reports, os.path.join(out_dir, "report.png"))


def main(specs: Sequence[str], corpus: str = "multilingual", split: str = "validation",
         max_docs: int = 0, out_dir: str = "tokenizer_report") -> list[dict]:
  """`tokenlab tokenizer-report`: reports of every spec on one corpus, printed and written."""
  texts = load_corpus(corpus, split, max_docs)
  reports = [report(load_tokenizer(s), texts, name=s) for s in specs]
  print(markdown(reports))
  paths = write(reports, out_dir)
  print("wrote " + ", ".join(paths))
  return reports
