"""`speech`: English utterances synthesised locally with espeak-ng, with exact alignments.

Every utterance is a sentence from a small grammar (spoken digit strings such as "seven
three five", "the red ball is to the left", "pick up the green cup", "three blue boxes"), so
downstream tasks (spoken digit and word recognition, phoneme probes) have exact labels. It
is spoken by one of several espeak-ng speakers (an English voice such as en-us or en-gb-x-rp
plus a voice variant such as f3, m3 or klatt, or 'base', the voice's own; none needs mbrola)
at one of a few rates and pitches, resampled from espeak-ng's 22,050 Hz to 16 kHz mono.
espeak-ng's synthesis callback reports the start of every word and phoneme (in ms, i.e.
multiples of 16 samples); a phoneme ends where the next phoneme or pause starts (a pause
within the utterance is part of the phoneme before it), a word spans its phonemes. A phoneme
that espeak-ng realises inside the one before it has zero length (start == end): word-final
r or l after a long vowel ("chair" in en-gb-scotland, "ball" in some voices), 19 of 2,313
phonemes in 160 default records. Phonemes are espeak-ng's IPA names with the stress mark
split off (`stress`: 0 none, 1 primary, 2 secondary), stored both as strings and as ids into
the fixed inventory `PHONEMES`; words are ids into `WORDS`.

Records: {'index', 'text', 'template' (id into TEMPLATES), 'words' (ids into WORDS),
'word_starts', 'word_ends' int64 (W,) in samples, 'phonemes' (the P IPA names, space-
separated), 'phoneme_ids', 'stress', 'phoneme_word' (the word each phoneme belongs to),
'phoneme_starts', 'phoneme_ends' int64 (P,), 'waveform' int16 (S,) at 16 kHz, 'speaker' (id
into `speakers(options)`), 'rate' (words per minute), 'pitch' (espeak-ng's 0..100)}. A
record is a pure function of (options, split, index): the sentence, speaker, rate and pitch
are drawn from `np.random.default_rng([seed, split, index])`, and synthesis of a fixed
sentence by a fixed speaker is bit-identical in any order and process (each utterance is
spoken by a fresh process, see `tokenlab.data.espeak`; tested). A sentence goes to
validation when a hash of its text falls under `validation_percent`, so train and validation
never share a sentence; with `validation_speaker` set, that speaker is also held out (it
speaks only validation).

Batches (`pipeline`, kind 'audio'): waveform float32 (B, S) in [-1, 1) with S = max_seconds
* 16000, zero-padded, and `lengths` int32 (B,); words / word_starts / word_ends / word_mask
(B, MAX_WORDS) and phonemes (ids) / stress / phoneme_word / phoneme_starts / phoneme_ends /
phoneme_mask (B, MAX_PHONEMES), padding 0 (id 0 is '<pad>' in both inventories); speaker,
rate, pitch, template int32 (B,); mask float32 (B,) (0 on rows that pad a last batch). With
`config.data.mel_bins` > 0 also mel float32 (B, frames, mel_bins), the log-mel spectrogram
of `tokenlab.nn.audio` (25 ms Hann window, 10 ms hop), and mel_lengths int32 (B,).

Licences. espeak-ng is GPL-3.0-or-later (its speak_lib.h says so); the `espeakng-loader`
wheel (0.2.4, which declares no licence in its metadata) bundles the compiled library and its
data. tokenlab loads that library with ctypes as a tool at build time only: it ships no
espeak-ng code (the ctypes structures follow speak_lib.h's declarations) and no speech data;
the audio is generated on the user's machine. The grammar and the phoneme inventory are
tokenlab's (Apache-2.0).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import espeak, storage
from tokenlab.errors import ConfigError, TokenlabError

SAMPLE_RATE = 16_000
_MS = SAMPLE_RATE // 1000  # Samples per millisecond: espeak-ng times are whole ms.

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple")
OBJECTS = ("ball", "box", "cup", "book", "key", "chair", "lamp", "hat", "shoe", "clock")
PLURALS = {o: o + ("es" if o.endswith(("x", "ch")) else "s") for o in OBJECTS}
# Not "on the" / "in the": espeak-ng's English dictionary speaks each as one word (one word
# event for two words), which would lose the alignment of "the".
PLACES = ("to the left", "to the right", "near the table", "under the chair", "inside the box",
          "next to the door", "behind the lamp")
COMMANDS = ("pick up", "put down", "move", "open", "find", "look at")
TEMPLATES = ("digits", "where", "command", "count")
# tokenlab's voice names -> espeak-ng's (its British English voice is called "en").
VOICES = {"en-us": "en-us", "en-gb": "en", "en-gb-x-rp": "en-gb-x-rp",
          "en-gb-scotland": "en-gb-scotland", "en-gb-x-gbclan": "en-gb-x-gbclan",
          "en-gb-x-gbcwmd": "en-gb-x-gbcwmd", "en-029": "en-029", "en-us-nyc": "en-us-nyc"}
MAX_DIGITS = 5  # The digits template speaks 3..MAX_DIGITS digits.


def _words_of_grammar() -> tuple[str, ...]:
  words = set(DIGITS) | set(COLOURS) | set(OBJECTS) | set(PLURALS.values()) | {"the", "is"}
  for phrase in PLACES + COMMANDS:
    words.update(phrase.split())
  return tuple(sorted(words))


WORDS = ("<pad>",) + _words_of_grammar()  # Word ids; 0 pads.
_WORD_ID = {w: i for i, w in enumerate(WORDS)}
MAX_WORDS = 8  # The longest sentences ("the yellow chair is next to the door") have 8 words.

# The phoneme inventory: every IPA phoneme (stress mark split off) that the espeak-ng of
# espeakng-loader 0.2.4 spoke in 10,550 utterances: two thirds of all (sentence, voice) pairs
# of the eight VOICES over every "where", "command" and "count" sentence and 300 digit
# strings, at rates 120..300 with variants base, klatt, f3, m3 (the second third added no
# phoneme). Ids are positions; 0 pads. A build that meets another phoneme stops with an
# error naming it.
PHONEMES = ("<pad>",
    "a", "aɪ", "aʊ", "b", "d", "dʒ", "e", "ei", "eə", "eɪ", "eː", "f", "h", "iə", "iː",
    "j", "k", "l", "m", "n", "o", "oə", "oʊ", "oː", "p", "r", "s", "t", "tʃ", "t̪", "uː",
    "v", "w", "z", "æ", "æʊ", "ð", "ɐ", "ɑː", "ɒ", "ɔ", "ɔɪ", "ɔː", "ɔːɹ", "ə", "əl", "əu",
    "əɪ", "əʊ", "ɚ", "ɛ", "ɛə", "ɛɹ", "ɜ", "ɜː", "ɡ", "ɪ", "ɪɹ", "ɹ", "ʃ", "ʉ", "ʉː", "ʊ",
    "ʌ", "ʌɹ", "ʌʉ", "ʌʊ", "ʍ", "θ", "ᵻ")
_PHONEME_ID = {p: i for i, p in enumerate(PHONEMES)}
MAX_PHONEMES = 48  # The most in those 10,550 utterances: 25 (the longest lasted 2.87 s).


def _split_stress(name: str) -> tuple[str, int]:
  """'ˈɛ' -> ('ɛ', 1); 'ˌaɪ' -> ('aɪ', 2); 'd' -> ('d', 0)."""
  if name[:1] == "ˈ":
    return name[1:], 1
  if name[:1] == "ˌ":
    return name[1:], 2
  return name, 0


def synthesize(text: str, speaker: str = "en-us", rate: int = 175,
               pitch: int = 50) -> dict[str, Any]:
  """Speaks `text` (lowercase words separated by single spaces) with espeak-ng.

  Args:
    text: the sentence; every word becomes one espeak-ng word event (checked).
    speaker: a voice of VOICES, optionally '+variant' (e.g. 'en-gb-x-rp+f3').
    rate: words per minute (80..450).
    pitch: base pitch, 0..100 (50 = the voice's normal).

  Returns:
    {'waveform': int16 (S,) at 16 kHz, 'words': str (W,), 'word_starts' / 'word_ends':
     int64 (W,), 'phonemes': str (P,), 'stress', 'phoneme_word', 'phoneme_starts' /
     'phoneme_ends': int64 (P,)}; times in samples at 16 kHz, each phoneme in [start, end)
     (empty for a phoneme spoken inside the one before it), in order, never overlapping.

  Raises:
    TokenlabError: espeak-ng's word events do not match the text's words.
  """
  return synthesize_many([(text, speaker, rate, pitch)])[0]


def synthesize_many(requests: Sequence[tuple[str, str, int, int]]) -> list[dict[str, Any]]:
  """`synthesize` for each (text, speaker, rate, pitch), in worker processes; in order."""
  native = []
  for text, speaker, rate, pitch in requests:
    voice, plus, variant = speaker.partition("+")
    native.append((text, VOICES.get(voice, voice) + plus + variant, rate, pitch))
  return [_aligned(req[0], *out) for req, out in zip(requests, espeak.synth_many(native))]


def resample(x: np.ndarray, rate_in: int, rate_out: int, zero_crossings: int = 16,
             beta: float = 8.6) -> np.ndarray:
  """Band-limited resampling by a Kaiser-windowed sinc (numpy; scipy.signal costs 1.5 s to
  import, more than a small build).

  Output sample m sits at input position m * rate_in / rate_out; the low-pass cuts at 0.95 of
  the lower Nyquist frequency, `zero_crossings` sinc lobes each side, Kaiser `beta` (8.6:
  about 90 dB stop band). The rates' ratio is rational, so the kernels repeat: one per phase.

  Args:
    x: float (n,).
    rate_in, rate_out: sample rates in Hz (integers).

  Returns:
    float64 (ceil(n * rate_out / rate_in),); zeros are assumed outside x.
  """
  g = np.gcd(rate_in, rate_out)
  up, down = rate_out // g, rate_in // g
  n_out = -(-len(x) * up // down)
  cutoff = 0.95 * min(rate_in, rate_out) / 2 / rate_in  # Cycles per input sample.
  half = zero_crossings / (2 * cutoff)  # Kernel half-width in input samples.
  taps = np.arange(-int(np.ceil(half)) + 1, int(np.ceil(half)) + 1)
  # Phase p of up: output m = q * up + p sits at input floor(m * down / up) + fraction.
  frac = (np.arange(up) * down % up) / up
  d = frac[:, None] - taps[None, :]  # (up, taps): distance from each tap to the position.
  window = np.i0(beta * np.sqrt(np.clip(1 - (d / half) ** 2, 0, None))) / np.i0(beta)
  kernels = 2 * cutoff * np.sinc(2 * cutoff * d) * window
  m = np.arange(n_out)
  idx = (m * down // up)[:, None] + taps[None, :]
  padded = np.concatenate([np.zeros(len(taps)), np.asarray(x, np.float64),
                           np.zeros(len(taps))])
  return (padded[idx + len(taps)] * kernels[m % up]).sum(1)


def _aligned(text: str, native_rate: int, native: np.ndarray,
             events: list[espeak.Event]) -> dict[str, Any]:
  """espeak-ng's samples and events -> `synthesize`'s record at 16 kHz."""
  words = text.split(" ")
  wave = resample(native.astype(np.float64), native_rate, SAMPLE_RATE)
  wave = np.clip(np.round(wave), -32768, 32767).astype(np.int16)
  # Character offset (1-based, as espeak-ng counts) of each word -> its index.
  offsets, pos = {}, 1
  for i, w in enumerate(words):
    offsets[pos] = i
    pos += len(w) + 1
  starts: list[int] = []  # Every phoneme or pause start, in order; a phoneme ends at the next.
  phonemes, stress, owner, bounds = [], [], [], []
  for kind, text_pos, ms, name in events:
    if kind == espeak.EVENT_WORD and text_pos not in offsets:
      raise TokenlabError(f"espeak-ng found a word at character {text_pos} of {text!r}")
    if kind == espeak.EVENT_PHONEME:
      bounds.append(ms * _MS)
      if name:  # An empty IPA name is a pause.
        if text_pos not in offsets:
          raise TokenlabError(f"espeak-ng phoneme {name!r} at character {text_pos} of "
                              f"{text!r} is not inside a word")
        base, mark = _split_stress(name)
        phonemes.append(base)
        stress.append(mark)
        owner.append(offsets[text_pos])
        starts.append(len(bounds) - 1)
    elif kind in (espeak.EVENT_END, espeak.EVENT_MSG_TERMINATED):
      bounds.append(ms * _MS)
  bounds.append(len(wave))
  p_starts = np.array([bounds[k] for k in starts], np.int64)
  p_ends = np.array([bounds[k + 1] for k in starts], np.int64)
  p_ends = np.minimum(p_ends, len(wave))
  owner_arr = np.array(owner, np.int64)
  if sorted(set(owner)) != list(range(len(words))):
    raise TokenlabError(f"espeak-ng gave no phonemes to some word of {text!r}; use words "
                        "without digits or punctuation, and no pair it speaks as one word "
                        "(such as 'on the')")
  first = np.searchsorted(owner_arr, np.arange(len(words)), side="left")
  last = np.searchsorted(owner_arr, np.arange(len(words)), side="right") - 1
  return {"waveform": wave, "words": np.array(words, object),
          "word_starts": p_starts[first], "word_ends": p_ends[last],
          "phonemes": np.array(phonemes, object), "stress": np.array(stress, np.int64),
          "phoneme_word": owner_arr, "phoneme_starts": p_starts, "phoneme_ends": p_ends}


# --- sentences, speakers, records ---------------------------------------------------------

def sentence(rng: np.random.Generator) -> tuple[int, str]:
  """Draws (template id, text): a template uniformly, then its words uniformly."""
  template = int(rng.integers(len(TEMPLATES)))

  def pick(seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]

  if TEMPLATES[template] == "digits":
    n = int(rng.integers(3, MAX_DIGITS + 1))
    text = " ".join(pick(DIGITS) for _ in range(n))
  elif TEMPLATES[template] == "where":
    text = f"the {pick(COLOURS)} {pick(OBJECTS)} is {pick(PLACES)}"
  elif TEMPLATES[template] == "command":
    text = f"{pick(COMMANDS)} the {pick(COLOURS)} {pick(OBJECTS)}"
  else:  # count: "three blue boxes"
    text = f"{pick(DIGITS[2:])} {pick(COLOURS)} {PLURALS[pick(OBJECTS)]}"
  return template, text


def split_of(text: str, validation_percent: int) -> str:
  """Returns the split a sentence belongs to: 'validation' when its hash is under the percent."""
  bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100
  return "validation" if bucket < validation_percent else "train"


def _csv(value: str) -> list[str]:
  return [v.strip() for v in str(value).split(",") if v.strip()]


def speakers(options: Mapping[str, Any]) -> list[str]:
  """Returns the speakers of a build, 'voice' or 'voice+variant' (speaker id = position):
  every voice of `voices` with every variant of `variants` ('base' = the voice's own)."""
  return [voice if var == "base" else f"{voice}+{var}"
          for voice, var in itertools.product(_csv(options["voices"]), _csv(options["variants"]))]


@functools.lru_cache(maxsize=1)
def variants() -> tuple[str, ...]:
  """Returns the voice variants in the espeakng-loader wheel (espeak-ng's own; no mbrola)."""
  import espeakng_loader  # pylint: disable=g-import-not-at-top
  return tuple(sorted(os.listdir(os.path.join(espeakng_loader.get_data_path(), "voices", "!v"))))


def _ints(options: Mapping[str, Any], key: str, lo: int, hi: int) -> list[int]:
  """Parses a comma-separated option of ints in lo..hi (ConfigError naming the fix)."""
  try:
    values = [int(v) for v in _csv(options[key])]
  except ValueError:
    values = []
  if not values or not all(lo <= v <= hi for v in values):
    raise ConfigError(f"speech option {key}={options[key]!r} must be comma-separated whole "
                      f"numbers in {lo}..{hi}, e.g. data.options.{key}='{lo},{hi}'")
  return values


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError (one line naming the fix) for options the builder cannot honour."""
  for voice in _csv(options["voices"]) or [""]:
    if voice not in VOICES:
      raise ConfigError(f"speech option voices names '{voice}'; use English espeak-ng voices "
                        f"(the sentences are English): {', '.join(VOICES)}")
  for var in _csv(options["variants"]) or [""]:
    if var != "base" and var not in variants():
      raise ConfigError(f"speech option variants names '{var}', not an espeak-ng variant; "
                        "e.g. base (the voice's own), f3, m3, klatt (all: speech.variants())")
  _ints(options, "rates", 80, 450)
  _ints(options, "pitches", 0, 100)
  held = options["validation_speaker"]
  if held and held not in speakers(options):
    raise ConfigError(f"speech option validation_speaker='{held}' is not one of the speakers "
                      f"(voices x variants): {', '.join(speakers(options))}")
  if held and len(speakers(options)) < 2:
    raise ConfigError("speech option validation_speaker needs at least two speakers")
  if not 1 <= options["validation_percent"] <= 50:
    raise ConfigError(f"speech option validation_percent={options['validation_percent']} "
                      "must be in 1..50")
  for key in ("num_train", "num_validation"):
    if options[key] < 1:
      raise ConfigError(f"speech option {key} must be >= 1")
  if not 1.0 <= options["max_seconds"] <= 30.0:
    raise ConfigError(f"speech option max_seconds={options['max_seconds']} must be in 1..30")


_SPLIT_STREAM = {"train": 0, "validation": 1}


def utterance(options: Mapping[str, Any], split: str, index: int) -> dict[str, Any]:
  """Returns what record `index` of `split` says, without synthesising it:
  {'text', 'template', 'speaker' (id), 'rate', 'pitch'}, drawn from (seed, split, index)."""
  rng = np.random.default_rng([options["seed"], _SPLIT_STREAM[split], index])
  while True:  # Rejection keeps every sentence in the split its hash names.
    template, text = sentence(rng)
    if split_of(text, options["validation_percent"]) == split:
      break
  names = speakers(options)
  held = options["validation_speaker"]
  allowed = ([names.index(held)] if split == "validation" else
             [i for i, n in enumerate(names) if n != held]) if held else list(range(len(names)))
  rates, pitches = _ints(options, "rates", 80, 450), _ints(options, "pitches", 0, 100)
  return {"text": text, "template": template,
          "speaker": allowed[int(rng.integers(len(allowed)))],
          "rate": rates[int(rng.integers(len(rates)))],
          "pitch": pitches[int(rng.integers(len(pitches)))]}


def record(options: Mapping[str, Any], split: str, index: int) -> dict[str, Any]:
  """Synthesises record `index` of `split` (the stored fields; see the module docstring)."""
  return records(options, split, [index])[0]


def records(options: Mapping[str, Any], split: str,
            indices: Sequence[int]) -> list[dict[str, Any]]:
  """Synthesises the records `indices` of `split` (espeak-ng workers run side by side).

  Raises:
    TokenlabError: an utterance is longer than max_seconds or has more than MAX_PHONEMES
      phonemes, or espeak-ng spoke a phoneme that is not in `PHONEMES`.
  """
  names = speakers(options)
  us = [utterance(options, split, i) for i in indices]
  spoken = synthesize_many([(u["text"], names[u["speaker"]], u["rate"], u["pitch"])
                            for u in us])
  out = []
  for index, u, r in zip(indices, us, spoken):
    if len(r["waveform"]) > max_samples(options):
      raise TokenlabError(f"speech: {u['text']!r} at rate {u['rate']} lasts "
                          f"{len(r['waveform']) / SAMPLE_RATE:.2f} s, over max_seconds="
                          f"{options['max_seconds']}; raise data.options.max_seconds")
    if len(r["phonemes"]) > MAX_PHONEMES:
      raise TokenlabError(f"speech: {u['text']!r} has {len(r['phonemes'])} phonemes, over "
                          f"MAX_PHONEMES={MAX_PHONEMES}")
    unknown = sorted(set(r["phonemes"]) - set(_PHONEME_ID))
    if unknown:
      raise TokenlabError(f"speech: espeak-ng spoke phonemes {unknown} that are not in "
                          "speech.PHONEMES (another espeak-ng data version?); add them there")
    out.append({"index": index, "text": u["text"], "template": u["template"],
                "words": np.array([_WORD_ID[w] for w in r["words"]], np.int64),
                "word_starts": r["word_starts"], "word_ends": r["word_ends"],
                "phonemes": " ".join(r["phonemes"]),
                "phoneme_ids": np.array([_PHONEME_ID[p] for p in r["phonemes"]], np.int64),
                "stress": r["stress"], "phoneme_word": r["phoneme_word"],
                "phoneme_starts": r["phoneme_starts"], "phoneme_ends": r["phoneme_ends"],
                "waveform": r["waveform"], "speaker": u["speaker"], "rate": u["rate"],
                "pitch": u["pitch"]})
  return out


def max_samples(options: Mapping[str, Any]) -> int:
  """Returns the padded waveform length S of a batch: max_seconds at 16 kHz."""
  return int(round(options["max_seconds"] * SAMPLE_RATE))



_CHUNK = 64  # Utterances handed to the espeak-ng workers at once.


class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_speech`: the records of `record`, synthesised at build time."""
  name = "tokenlab_speech"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    def seq(dtype) -> tfds.features.Tensor:
      return tfds.features.Tensor(shape=(None,), dtype=dtype)

    return tfds.features.FeaturesDict({
        "index": np.int64, "text": tfds.features.Text(), "template": np.int64,
        "words": seq(np.int64), "word_starts": seq(np.int64), "word_ends": seq(np.int64),
        "phonemes": tfds.features.Text(), "phoneme_ids": seq(np.int64),
        "stress": seq(np.int64), "phoneme_word": seq(np.int64),
        "phoneme_starts": seq(np.int64), "phoneme_ends": seq(np.int64),
        "waveform": seq(np.int16), "speaker": np.int64, "rate": np.int64, "pitch": np.int64,
    })

  def examples(self, split, options) -> Iterator[tuple[int, dict]]:
    check_options(options)
    num = options["num_train" if split == "train" else "num_validation"]
    for start in range(0, num, _CHUNK):
      for rec in records(options, split, range(start, min(num, start + _CHUNK))):
        yield rec["index"], rec


def document(record_: Mapping[str, Any]) -> bytes:
  """Returns a record's sentence as UTF-8 (what `tokenlab data show speech` prints)."""
  text = record_["text"]
  return text if isinstance(text, bytes) else str(text).encode()


def stats(options: Mapping[str, Any]) -> dict[str, Any]:
  """Returns what the options imply without synthesising: speakers, distinct sentences and
  the share of each template in train."""
  out: dict[str, Any] = {"speakers": len(speakers(options)),
                         "max_seconds": float(options["max_seconds"])}
  for split in ("train", "validation"):
    us = [utterance(options, split, i)
          for i in range(options["num_train" if split == "train" else "num_validation"])]
    out[f"{split}_distinct_sentences"] = len({u["text"] for u in us})
    if split == "train":
      counts = np.bincount([u["template"] for u in us], minlength=len(TEMPLATES))
      for name, c in zip(TEMPLATES, counts):
        out[f"train_share_{name}"] = float(c / len(us))
  return out


# --- batches (pipeline kind 'audio') --------------------------------------------------------

def _pad(values: np.ndarray, length: int, dtype) -> np.ndarray:
  out = np.zeros(length, dtype)
  out[:len(values)] = values
  return out


def example(rec: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Stored record -> one example of fixed shapes (see the module docstring's batches)."""
  wave = np.asarray(rec["waveform"], np.int16)
  size = max_samples(options)
  n_w, n_p = len(rec["words"]), len(rec["phoneme_ids"])
  out = {"waveform": _pad(wave.astype(np.float32) / 32768.0, size, np.float32),
         "lengths": np.int32(len(wave)), "mask": np.float32(1.0)}
  for key in ("words", "word_starts", "word_ends"):
    out[key] = _pad(rec[key], MAX_WORDS, np.int32)
  out["word_mask"] = _pad(np.ones(n_w), MAX_WORDS, np.float32)
  out["phonemes"] = _pad(rec["phoneme_ids"], MAX_PHONEMES, np.int32)
  for key in ("stress", "phoneme_word", "phoneme_starts", "phoneme_ends"):
    out[key] = _pad(rec[key], MAX_PHONEMES, np.int32)
  out["phoneme_mask"] = _pad(np.ones(n_p), MAX_PHONEMES, np.float32)
  for key in ("speaker", "rate", "pitch", "template"):
    out[key] = np.int32(rec[key])
  return out


@dataclasses.dataclass(repr=False)
class Example(grain.transforms.Map):
  """Record index -> `example` of the record."""
  source: Any
  options: Mapping[str, Any]

  def __repr__(self) -> str:
    return "speech.Example"

  def map(self, index: int) -> dict[str, np.ndarray]:
    return example(self.source[int(index)], self.options)


MEL_N_FFT, MEL_HOP = 400, 160  # 25 ms windows, 10 ms hop at 16 kHz.


@functools.lru_cache(maxsize=None)
def _mel_fn(mel_bins: int):
  import jax  # pylint: disable=g-import-not-at-top
  from tokenlab.nn import audio  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda x: audio.log_mel_spectrogram(x, SAMPLE_RATE, MEL_N_FFT, MEL_HOP,
                                                     mel_bins))


@dataclasses.dataclass
class AddMel(grain.transforms.Map):
  """Batch -> batch plus mel float32 (B, frames, mel_bins) and mel_lengths int32 (B,).

  Computed on the host CPU (the pipeline's device), so it never competes with training for
  the accelerator; frames past a waveform's length hold ln(1e-5) or partly padded windows.
  """
  mel_bins: int

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import jax  # pylint: disable=g-import-not-at-top
    with jax.default_device(jax.devices("cpu")[0]):
      mel = np.asarray(_mel_fn(self.mel_bins)(batch["waveform"]))
    lengths = batch["lengths"].astype(np.int64)
    # Frames centred on a real sample (t * hop < length); 0 on padding rows.
    frames = np.where(lengths > 0, (lengths + MEL_HOP - 1) // MEL_HOP, 0).astype(np.int32)
    return {**batch, "mel": mel, "mel_lengths": frames}


def batch_spec(options: Mapping[str, Any], batch_size: int,
               mel_bins: int = 0) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Returns {field: (shape, dtype)} of a batch, nothing built."""
  b = batch_size
  spec: dict[str, tuple[tuple[int, ...], Any]] = {
      "waveform": ((b, max_samples(options)), np.float32), "mask": ((b,), np.float32)}
  for key in ("lengths", "speaker", "rate", "pitch", "template"):
    spec[key] = ((b,), np.int32)
  for key in ("words", "word_starts", "word_ends"):
    spec[key] = ((b, MAX_WORDS), np.int32)
  spec["word_mask"] = ((b, MAX_WORDS), np.float32)
  for key in ("phonemes", "stress", "phoneme_word", "phoneme_starts", "phoneme_ends"):
    spec[key] = ((b, MAX_PHONEMES), np.int32)
  spec["phoneme_mask"] = ((b, MAX_PHONEMES), np.float32)
  if mel_bins:
    from tokenlab.nn import audio  # pylint: disable=g-import-not-at-top
    frames = audio.num_frames(max_samples(options), MEL_N_FFT, MEL_HOP)
    spec["mel"] = ((b, frames, mel_bins), np.float32)
    spec["mel_lengths"] = ((b,), np.int32)
  return spec


def describe(rec: Mapping[str, Any], options: Mapping[str, Any]) -> str:
  """Returns a record in two lines: sentence, speaker, duration; its phonemes by word."""
  seconds = len(rec["waveform"]) / SAMPLE_RATE
  phonemes = document({"text": rec["phonemes"]}).decode().split(" ")
  by_word = [[] for _ in rec["words"]]
  for p, w in zip(phonemes, rec["phoneme_word"]):
    by_word[int(w)].append(p)
  return (f"{document(rec).decode()!r}: {speakers(options)[int(rec['speaker'])]}, rate "
          f"{int(rec['rate'])}, pitch {int(rec['pitch'])}, {seconds:.2f} s\n  phonemes: "
          + " | ".join(" ".join(ps) for ps in by_word))


def plot(rec: Mapping[str, Any], options: Mapping[str, Any], path: str,
         mel_bins: int = 80) -> str:
  """Writes a PNG of one record: waveform with word spans, log-mel with phoneme boundaries.

  Returns the path written.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from tokenlab.nn import audio  # pylint: disable=g-import-not-at-top
  wave = np.asarray(rec["waveform"], np.float32) / 32768.0
  mel = np.asarray(audio.log_mel_spectrogram(wave, SAMPLE_RATE, MEL_N_FFT, MEL_HOP, mel_bins))
  seconds = np.arange(len(wave)) / SAMPLE_RATE
  words = [WORDS[int(i)] for i in rec["words"]]
  phonemes = [PHONEMES[int(i)] for i in rec["phoneme_ids"]]
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True,
                                    gridspec_kw={"height_ratios": [1, 1.6]})
  top.plot(seconds, wave, lw=0.4, color="k")
  for k, (s, e) in enumerate(zip(rec["word_starts"], rec["word_ends"])):
    top.axvspan(s / SAMPLE_RATE, e / SAMPLE_RATE, color=f"C{k % 2}", alpha=0.15)
    top.text((s + e) / 2 / SAMPLE_RATE, 0.9 * np.abs(wave).max(), words[k], ha="center",
             fontsize=9)
  top.set_ylabel("waveform")
  bottom.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
                extent=(-MEL_HOP / 2 / SAMPLE_RATE, (len(mel) - 0.5) * MEL_HOP / SAMPLE_RATE,
                        -0.5, mel_bins - 0.5))
  for s, e, p in zip(rec["phoneme_starts"], rec["phoneme_ends"], phonemes):
    bottom.axvline(s / SAMPLE_RATE, color="w", lw=0.6)
    bottom.text((s + e) / 2 / SAMPLE_RATE, mel_bins * 0.93, p, color="w", ha="center",
                fontsize=9)
  bottom.axvline(rec["phoneme_ends"][-1] / SAMPLE_RATE, color="w", lw=0.6)
  bottom.set_ylabel(f"log-mel bin ({mel_bins})")
  bottom.set_xlabel("seconds")
  speaker = speakers(options)[int(rec["speaker"])]
  fig.suptitle(f"speech: {document(rec).decode()!r} ({speaker}, rate {int(rec['rate'])}, "
               f"pitch {int(rec['pitch'])}); word spans and phoneme boundaries from espeak-ng",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
