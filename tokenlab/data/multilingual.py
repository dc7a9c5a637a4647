"""`multilingual`: parallel, dictionary and monolingual text of many languages, from pip packages.

Everything is read from packages installed with tokenlab; nothing is downloaded:

  Django     the translation catalogs inside the wheel, `django/**/locale/<lang>/LC_MESSAGES/
             django.po` and `djangojs.po` (gettext .po files, parsed by `parse_po` here):
             real English UI strings with their translations (about 900 per well-covered
             language). Django is BSD-3-Clause; its catalogs say "distributed under the same
             license as the Django package".
  Babel      CLDR locale data (`babel.Locale`): names of languages, territories, scripts,
             currencies, months, weekdays, time zones and units in every locale. Babel's code is
             BSD-3-Clause; the CLDR data it ships is under the Unicode License v3
             (`babel/locale-data/LICENSE.unicode`).
  wordfreq   word frequency lists of 42 languages (`wordfreq.top_n_list`). Code Apache-2.0;
             its data files CC BY-SA 4.0 (plus attribution terms for SUBTLEX, Google Books
             Ngrams and OpenSubtitles, see the package's README).

English is the source side; `lang` is the target language (a code that is a Django locale
directory, a Babel locale and a wordfreq language at once; `languages()` lists them). The
dataset's `kind` option chooses what a record is:

  monolingual  one string of `lang`: every translated Django string (every plural form) and
               every CLDR name, deduplicated. For lang='en' the English msgids and English
               CLDR names, so the source corpus of a transfer experiment comes from here too.
  parallel     one (English, target) pair: Django msgid -> msgstr, and CLDR names paired by
               their code (territory 'DE': 'Germany' -> 'Deutschland').
  dictionary   one (English word, target word) pair: the parallel pairs whose sides are both
               single words (letters, inner hyphens/apostrophes, no spaces).
  words        one word of wordfreq's `num_words` most frequent words of `lang`.

Strings are cleaned only in whitespace: runs of spaces, tabs and newlines become one space,
ends are stripped; empty strings are dropped. Django's format placeholders ('%(name)s',
'{count}') and inline HTML stay, they are part of the real strings. Fuzzy and untranslated
catalog entries are skipped; in a plural entry the English singular pairs with the first
form and the English plural with the second (with the only form, for languages that have
one); further forms (few/many) enter the monolingual corpus only.

Records: {'origin', 'en', 'target', 'text'}, all text; origin says where a string comes
from ('django:contrib/admin', 'django:contrib/admin/js', 'cldr:territories', 'wordfreq').
The document (`text`) of a parallel or dictionary record is one line 'English<TAB>target'
(neither side can hold a tab or newline after cleaning); of a monolingual or words record,
the string itself ('en' is then empty and 'target' equals 'text'). As in every text
dataset, a document's first token is context only.

Splits: a record goes to 'validation' when a hash of its target-language string falls under
`validation_percent`, else to 'train'. The rule is the same for every kind, so a held-out
German string is held out everywhere: in the monolingual corpus, as the German side of
parallel pairs and in the dictionary (the English side of a pair may still occur in the
other split, paired with another translation). The split never changes as packages add or
drop strings.

Helpers for code that wants Python lists rather than a tfds dataset: `languages()`,
`parallel_pairs(lang, split)`, `dictionary(lang, split)`, `monolingual(lang, split)`,
`words(lang, n, split)`, `records(options, split)`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError, TokenlabError

SOURCE_LANG = "en"
KINDS = ("monolingual", "parallel", "dictionary", "words")
DOMAINS = ("django.po", "djangojs.po")
DEFAULT_VALIDATION_PERCENT = 10
MAX_WORDS = 100_000
# CLDR name tables of a babel.Locale: (origin category, attribute).
_CLDR_TABLES = (("languages", "languages"), ("territories", "territories"),
                ("scripts", "scripts"), ("currencies", "currencies"))


# --- gettext catalogs --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PoEntry:
  """One message of a .po catalog.

  Attributes:
    msgid: the English source string ('' for the catalog header).
    msgid_plural: the English plural ('' for a message without plural forms).
    msgstr: the translation, or its plural forms msgstr[0], msgstr[1], ... in order.
    context: msgctxt ('' when absent).
    fuzzy: flagged '#, fuzzy' (a translation the translators have not confirmed).
  """
  msgid: str
  msgid_plural: str = ""
  msgstr: tuple[str, ...] = ("",)
  context: str = ""
  fuzzy: bool = False


_PO_LINE = re.compile(r'^(msgctxt|msgid_plural|msgid|msgstr)(?:\[(\d+)\])?\s+(".*")$')
_PO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
               "f": "\f", "v": "\v"}


def _unquote(quoted: str, lineno: int) -> str:
  if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
    raise TokenlabError(f".po line {lineno}: expected a quoted string, got {quoted!r}")
  return re.sub(r"\\(.)", lambda m: _PO_ESCAPES.get(m.group(1), m.group(1)), quoted[1:-1])


def parse_po(text: str) -> list[PoEntry]:
  """Returns the messages of a gettext .po file, header included, obsolete ('#~') excluded.

  Handles msgctxt, msgid_plural with msgstr[N], multi-line (continued) strings, C escapes
  and the '#, fuzzy' flag; other comments are ignored.

  Raises:
    TokenlabError: a line that is none of the above (names the line).
  """
  entries: list[PoEntry] = []
  cur: dict[str, Any] = {}
  field: tuple[str, int] | None = None  # The field a continuation line appends to.

  def flush() -> None:
    nonlocal cur, field
    if "msgid" in cur:
      forms = cur.get("msgstr", {0: ""})
      entries.append(PoEntry(msgid=cur["msgid"], msgid_plural=cur.get("msgid_plural", ""),
                             msgstr=tuple(forms[i] for i in sorted(forms)),
                             context=cur.get("msgctxt", ""), fuzzy=cur.get("fuzzy", False)))
    elif cur.get("msgctxt") or cur.get("msgstr"):
      raise TokenlabError(f".po entry without msgid before line {lineno}")
    cur, field = {}, None

  lineno = 0
  for lineno, raw in enumerate(text.splitlines(), 1):
    line = raw.strip()
    if not line:
      flush()
      continue
    if line.startswith("#"):
      if "msgstr" in cur:  # A comment after a complete entry starts the next one.
        flush()
      if line.startswith("#,") and "fuzzy" in (f.strip() for f in line[2:].split(",")):
        cur["fuzzy"] = True
      field = None  # '#~' (obsolete) continuation lines must not extend a live field.
      continue
    if line.startswith('"'):
      if field is None:
        raise TokenlabError(f".po line {lineno}: a string continues no msgid/msgstr: {raw!r}")
      name, index = field
      value = _unquote(line, lineno)
      if name == "msgstr":
        cur["msgstr"][index] += value
      else:
        cur[name] += value
      continue
    match = _PO_LINE.match(line)
    if not match:
      raise TokenlabError(f".po line {lineno}: cannot parse {raw!r}")
    name, index, quoted = match.group(1), match.group(2), match.group(3)
    if name in ("msgctxt", "msgid") and "msgstr" in cur:
      flush()  # No blank line between two entries.
    value = _unquote(quoted, lineno)
    if name == "msgstr":
      i = int(index or 0)
      cur.setdefault("msgstr", {})[i] = value
      field = ("msgstr", i)
    else:
      cur[name] = value
      field = (name, 0)
  flush()
  return entries


def _package_dir(name: str) -> str:
  """Returns the directory of an installed package without importing it."""
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise TokenlabError(f"dataset 'multilingual' reads files of the {name} package, which is "
                        f"not installed; run `pip install -e .` (or pip install {name})")
  return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=1)
def _catalog_index() -> dict[str, tuple[str, ...]]:
  """Returns {django locale name: sorted paths of its django.po / djangojs.po catalogs}."""
  root = _package_dir("django")
  index: dict[str, list[str]] = {}
  for dirpath, _, filenames in os.walk(root):
    parts = dirpath.split(os.sep)
    if len(parts) >= 3 and parts[-1] == "LC_MESSAGES" and parts[-3] == "locale":
      for f in filenames:
        if f in DOMAINS:
          index.setdefault(parts[-2], []).append(os.path.join(dirpath, f))
  return {lang: tuple(sorted(paths)) for lang, paths in sorted(index.items())}


def _origin(path: str) -> str:
  """'.../django/contrib/admin/locale/de/LC_MESSAGES/djangojs.po' -> 'django:contrib/admin/js'."""
  rel = os.path.relpath(path, _package_dir("django")).split(os.sep)
  package = "/".join(rel[:rel.index("locale")])
  return f"django:{package}" + ("/js" if rel[-1] == "djangojs.po" else "")


def clean(text: str) -> str:
  """Returns `text` with whitespace runs as single spaces and the ends stripped."""
  return " ".join(text.split())


@functools.lru_cache(maxsize=8)
def _django(lang: str) -> tuple[tuple[tuple[str, str, str], ...], tuple[tuple[str, str], ...]]:
  """Returns ((origin, en, target) pairs, (origin, string) monolingual strings) of `lang`."""
  pairs, strings = [], []
  for path in _catalog_index().get(lang, ()):
    origin = _origin(path)
    with open(path, encoding="utf-8") as f:
      entries = parse_po(f.read())
    for e in entries:
      if not e.msgid or e.fuzzy:
        continue  # The header, or a translation nobody confirmed.
      if lang == SOURCE_LANG:  # Django's English catalogs: msgids only, msgstr empty.
        strings += [(origin, clean(s)) for s in (e.msgid, e.msgid_plural) if clean(s)]
        continue
      forms = [clean(s) for s in e.msgstr]
      if not e.msgid_plural:
        candidates = [(e.msgid, forms[0])]
      elif len(forms) >= 2:
        candidates = [(e.msgid, forms[0]), (e.msgid_plural, forms[1])]
      else:  # One form for every number (e.g. Japanese): it translates the English plural.
        candidates = [(e.msgid_plural, forms[0])]
      pairs += [(origin, clean(en), t) for en, t in candidates if clean(en) and t]
      strings += [(origin, t) for t in forms if t]
  return tuple(pairs), tuple(strings)


# --- CLDR (Babel) ------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _cldr(lang: str) -> dict[tuple[str, str], tuple[str, ...]]:
  """Returns {(category, key): names} of CLDR strings of `lang`, in a stable order.

  Months and weekdays give their stand-alone wide names first (the dictionary forms), then
  the format wide names where they differ (e.g. Russian genitive 'января').
  """
  import babel  # pylint: disable=g-import-not-at-top
  from babel import units  # pylint: disable=g-import-not-at-top
  loc = babel.Locale.parse(lang)
  out: dict[tuple[str, str], tuple[str, ...]] = {}
  for category, attr in _CLDR_TABLES:
    for key, name in sorted(getattr(loc, attr).items()):
      out[(category, key)] = (name,)
  for category, table in (("months", loc.months), ("days", loc.days)):
    for key in sorted(table["stand-alone"]["wide"]):
      names = (table["stand-alone"]["wide"][key], table["format"]["wide"].get(key))
      out[(category, str(key))] = tuple(dict.fromkeys(n for n in names if n))
  for zone, names in sorted(loc.meta_zones.items()):
    for variant, name in sorted(names.get("long", {}).items()):
      out[("time_zones", f"{zone}/{variant}")] = (name,)
  for unit in sorted(babel.Locale.parse(SOURCE_LANG).unit_display_names):
    name = units.get_unit_name(unit, length="long", locale=loc)
    if name:
      out[("units", unit)] = (name,)
  return {k: tuple(c for c in map(clean, v) if c) for k, v in out.items()
          if any(map(clean, v))}


# --- the languages -----------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def languages() -> tuple[str, ...]:
  """Returns the language codes that have all three sources, sorted ('en' among them).

  A code counts only where it is exactly a Django locale directory, a Babel locale and a
  wordfreq language: wordfreq silently substitutes the nearest language it has for any other
  code (Esperanto 'eo' gets English, Afrikaans 'af' Dutch), so near matches are not taken.
  """
  import wordfreq  # pylint: disable=g-import-not-at-top
  from babel import localedata  # pylint: disable=g-import-not-at-top
  babel_locales = set(localedata.locale_identifiers())
  wordfreq_langs = set(wordfreq.available_languages())
  return tuple(sorted(set(_catalog_index()) & babel_locales & wordfreq_langs))


def _check_lang(lang: str, kind: str = "monolingual") -> None:
  if lang not in languages():
    raise ConfigError(f"multilingual has no language '{lang}' (it needs Django catalogs, "
                      "Babel CLDR data and a wordfreq list under exactly that code); set "
                      f"data.options.lang to one of: {', '.join(languages())}")
  if lang == SOURCE_LANG and kind in ("parallel", "dictionary"):
    raise ConfigError(f"multilingual kind='{kind}' pairs English with a target language; set "
                      "data.options.lang to a target (e.g. 'de'), not 'en'")


def split_of(text: str, validation_percent: int = DEFAULT_VALIDATION_PERCENT) -> str:
  """Returns 'validation' or 'train' for a target-language string, from a stable hash."""
  bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100
  return "validation" if bucket < validation_percent else "train"


def _in_split(text: str, split: str | None, validation_percent: int) -> bool:
  if split is not None and split not in storage.SPLITS:
    raise ConfigError(f"unknown split '{split}'; use one of: {', '.join(storage.SPLITS)} "
                      "(or None for both)")
  return split is None or split_of(text, validation_percent) == split


def is_word(text: str) -> bool:
  """True for one word: letters (with their combining marks), inner '-' or apostrophes."""
  def letter(c: str) -> bool:
    return c.isalpha() or unicodedata.category(c).startswith("M")
  return (bool(text) and text[0].isalpha() and letter(text[-1])
          and all(letter(c) or c in "-'\u2019" for c in text))


@functools.lru_cache(maxsize=16)
def _all_records(lang: str, kind: str, num_words: int) -> tuple[dict[str, str], ...]:
  """Returns every record of (lang, kind) before splitting, deduplicated, in stable order."""
  _check_lang(lang, kind)
  if kind == "words":
    return tuple({"origin": "wordfreq", "en": "", "target": w, "text": w}
                 for w in words(lang, num_words))
  if kind == "monolingual":
    strings = list(_django(lang)[1])
    for (category, _), names in _cldr(lang).items():
      strings += [(f"cldr:{category}", n) for n in names]
    seen: dict[str, str] = {}
    for origin, s in strings:
      seen.setdefault(s, origin)  # The first source of a string names its origin.
    return tuple({"origin": o, "en": "", "target": s, "text": s} for s, o in seen.items())
  pairs = list(_django(lang)[0])
  english, target = _cldr(SOURCE_LANG), _cldr(lang)
  for key, names in target.items():
    if key in english:
      pairs += [(f"cldr:{key[0]}", english[key][0], n) for n in names]
  if kind == "dictionary":
    pairs = [p for p in pairs if is_word(p[1]) and is_word(p[2])]
  seen_pairs: dict[tuple[str, str], str] = {}
  for origin, en, t in pairs:
    seen_pairs.setdefault((en, t), origin)
  return tuple({"origin": o, "en": en, "target": t, "text": f"{en}\t{t}"}
               for (en, t), o in seen_pairs.items())


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for an unknown kind or language, or an out-of-range number."""
  if options["kind"] not in KINDS:
    raise ConfigError(f"multilingual option kind={options['kind']!r} must be one of: "
                      f"{', '.join(KINDS)}; set data.options.kind")
  _check_lang(options["lang"], options["kind"])
  if not 1 <= options["validation_percent"] <= 50:
    raise ConfigError(f"multilingual option validation_percent={options['validation_percent']}"
                      " must be in 1..50; set data.options.validation_percent=10")
  if not 1 <= options["num_words"] <= MAX_WORDS:
    raise ConfigError(f"multilingual option num_words={options['num_words']} must be in "
                      f"1..{MAX_WORDS}")


def records(options: Mapping[str, Any], split: str | None) -> list[dict[str, str]]:
  """Returns the records {'origin', 'en', 'target', 'text'} of `split` (None = both)."""
  check_options(options)
  pct = options["validation_percent"]
  return [dict(r) for r in _all_records(options["lang"], options["kind"], options["num_words"])
          if _in_split(r["target"], split, pct)]


def _options(lang: str, kind: str, validation_percent: int, num_words: int = 5000
             ) -> dict[str, Any]:
  return {"lang": lang, "kind": kind, "validation_percent": validation_percent,
          "num_words": num_words}


def parallel_pairs(lang: str, split: str | None = None,
                   validation_percent: int = DEFAULT_VALIDATION_PERCENT
                   ) -> list[tuple[str, str]]:
  """Returns the (English, target) string pairs of `lang` in `split` (None = both)."""
  return [(r["en"], r["target"]) for r in records(
      _options(lang, "parallel", validation_percent), split)]


def dictionary(lang: str, split: str | None = None,
               validation_percent: int = DEFAULT_VALIDATION_PERCENT
               ) -> list[tuple[str, str]]:
  """Returns the (English word, target word) pairs of `lang` in `split` (None = all)."""
  return [(r["en"], r["target"]) for r in records(
      _options(lang, "dictionary", validation_percent), split)]


def monolingual(lang: str, split: str | None = None,
                validation_percent: int = DEFAULT_VALIDATION_PERCENT) -> list[str]:
  """Returns the distinct strings of `lang` (Django catalogs and CLDR) in `split`."""
  return [r["text"] for r in records(_options(lang, "monolingual", validation_percent), split)]


def words(lang: str, n: int = 5000, split: str | None = None,
          validation_percent: int = DEFAULT_VALIDATION_PERCENT) -> list[str]:
  """Returns wordfreq's `n` most frequent words of `lang` (most frequent first) in `split`.

  Raises:
    ConfigError: `lang` is not exactly one of wordfreq's languages. wordfreq itself would
      answer with the nearest language it has, e.g. English words for 'eo'.
  """
  import wordfreq  # pylint: disable=g-import-not-at-top
  available = sorted(wordfreq.available_languages())
  if lang not in available:
    raise ConfigError(f"wordfreq has no word list for '{lang}' (it would silently use the "
                      f"nearest language instead); use one of: {', '.join(available)}")
  out = [clean(w) for w in wordfreq.top_n_list(lang, n)]
  return [w for w in dict.fromkeys(out) if w and _in_split(w, split, validation_percent)]


# --- the tfds builder --------------------------------------------------------------------

class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_multilingual`: records {'origin', 'en', 'target', 'text'}."""
  name = "tokenlab_multilingual"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    return tfds.features.FeaturesDict({k: tfds.features.Text()
                                       for k in ("origin", "en", "target", "text")})

  def examples(self, split, options) -> Iterator[tuple[str, dict]]:
    # Keys are positions in the unsplit list, unique and stable for given package versions.
    pct = options["validation_percent"]
    check_options(options)
    every = _all_records(options["lang"], options["kind"], options["num_words"])
    for i, r in enumerate(every):
      if split_of(r["target"], pct) == split:
        yield f"{i:07d}", dict(r)


def document(record: Mapping[str, Any]) -> bytes:
  """Returns the document bytes of one record ('English<TAB>target' for pairs)."""
  return record["text"]


def stats(options: Mapping[str, Any]) -> dict[str, Any]:
  """Returns record counts per split and per origin for `tokenlab data build`."""
  out: dict[str, Any] = {}
  for split in storage.SPLITS:
    recs = records(options, split)
    out[f"{split}_records"] = len(recs)
    out[f"{split}_chars"] = sum(len(r["text"]) for r in recs)
  origins: dict[str, int] = {}
  for r in records(options, None):
    group = r["origin"].split(":")[0]
    origins[group] = origins.get(group, 0) + 1
  out.update({f"records_from_{k}": v for k, v in sorted(origins.items())})
  return out


def summary(langs: Sequence[str]) -> list[dict[str, Any]]:
  """Returns one row of sizes per language (for BUILD_NOTES): pairs, words, strings."""
  rows = []
  for lang in langs:
    django_pairs = len({(en, t) for _, en, t in _django(lang)[0]})
    row = {"lang": lang, "django_pairs": django_pairs,
           "monolingual": len(monolingual(lang)),
           "monolingual_chars": sum(map(len, monolingual(lang)))}
    if lang != SOURCE_LANG:
      row.update(parallel=len(parallel_pairs(lang)), dictionary=len(dictionary(lang)),
                 parallel_validation=len(parallel_pairs(lang, "validation")))
    rows.append(row)
  return rows
