"""`tokenlab audio-report`: the audio-token benchmark, the survey's table in miniature.

Mousavi et al., "Discrete Audio Tokens: More Than a Survey!" (arXiv 2506.10274) set
tokenizers side by side at several bitrates: reconstruction, intelligibility, what probes
read from the tokens, how predictable the tokens are. This report does that for tokenlab's
audio tokenizers on the `speech` corpus's validation split:

  tokenlab audio-report --train --out docs/audio      # trains the default set, then reports
  tokenlab audio-report RUN1 RUN2 --recognizer PER_RUN --out DIR

Each TOKENIZER is a run directory (a trained `audio_codec` or `speech_ssl` run) or, with
`--train`, an experiment spec ('experiments/audio_codec.py:size=cpu,bitrate=low') trained
into OUT/runs/<name> (a finished run there is reused). A `speech_ssl` run gives one row per
k of `--units` (k-means units, fitted when missing); units have no decoder, so their
reconstruction columns are empty. The recogniser (`--recognizer`, a
`phoneme_recognizer` run or spec; with `--train` the cpu one by default) must read the same
mel bins. Every run must use the same `speech` options (one corpus).

Rows: each tokenizer, and two trivial ones: 'log-mel (input)' (the continuous features
themselves: the upper bound of the probes and of intelligibility; Griffin-Lim of the true
mel bounds SI-SNR) and 'mean mel (silence)' (a decoder that outputs the training set's mean
log-mel frame whatever the tokens: the lower bound). Columns (tokenlab/evals/audio.py):

- bits/s: frame rate x sum of log2 codebook sizes (the input row: 32-bit floats per bin);
- usage, code ppl: codebook usage and perplexity over the validation tokens;
- mel-L1: |log-mel of the reconstruction - the input's| over real frames (natural-log units);
- SI-SNR: of the Griffin-Lim waveform of the reconstruction against the original waveform
  (the first `si_snr_utterances` validation utterances; phase is estimated, so even the
  true mel stays far below a waveform codec's numbers: compare within the column);
- PER: phoneme error rate of the CTC recogniser on the reconstruction;
- phone probe: frame-level linear probe accuracy of the tokens (one-hot per codebook; FSQ
  codes as one-hot per dimension) against the phoneme at each token frame's centre;
- speaker probe: linear probe of the per-utterance bag of tokens (mean one-hot) -> speaker;
- LM ppl: count bigrams (add-one), one per codebook over time, fitted on train and scored
  on validation: the geometric mean over codebooks of the per-token perplexity; LM bits per
  frame (summed over codebooks) beside it in the JSON.

Writes OUT/report.md (the table), OUT/report.json (every number, the runs, the command's
settings) and OUT/report.png (bitrate against mel-L1, PER and the phoneme probe).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tokenlab.errors import TokenlabError
from tokenlab.evals import audio

DEFAULT_TOKENIZERS = tuple(
    f"experiments/audio_codec.py:size=cpu,quantizer={q},bitrate={b}"
    for q, bs in (("rvq", ("low", "mid", "high")), ("fsq", ("low", "high"))) for b in bs
) + ("experiments/speech_ssl.py:size=cpu",)
DEFAULT_RECOGNIZER = "experiments/phoneme_recognizer.py:size=cpu"
INPUT_ROW, MEAN_ROW = "log-mel (input)", "mean mel (silence)"
MAX_ONE_HOT = 4096   # wider one-hot code features (e.g. FSQ's 64,000 codes) are refused
COLUMNS = (("tokenizer", "name"), ("bits/s", "bits_per_second"), ("usage", "usage"),
           ("code ppl", "perplexity"), ("mel-L1", "mel_l1"), ("SI-SNR dB", "si_snr"),
           ("PER", "per"), ("phone probe", "phoneme_probe"), ("speaker probe", "speaker_probe"),
           ("LM ppl", "lm_perplexity"))


# --- inputs ---------------------------------------------------------------------------------

def load_corpus(data_cfg: Any, split: str, max_utterances: int = 0,
                batch_size: int = 50) -> dict[str, np.ndarray]:
  """All utterances of a `speech` split with log-mel, as numpy arrays in stored order:
  mel (N, T, F), mel_lengths, waveform (N, S), lengths, phonemes / phoneme_starts /
  phoneme_ends (N, P), speaker. `max_utterances` > 0 keeps the first ones."""
  from tokenlab import data
  keys = ("mel", "mel_lengths", "waveform", "lengths", "phonemes", "phoneme_starts",
          "phoneme_ends", "speaker")
  parts: dict[str, list] = {k: [] for k in keys}
  it = data.make_iterator(data_cfg, split=split, batch_size=batch_size, seed=0, shuffle=False,
                          num_epochs=1)
  n = 0
  for batch in it:
    rows = batch["mask"] > 0
    for k in keys:
      parts[k].append(np.asarray(batch[k])[rows])
    n += int(rows.sum())
    if max_utterances and n >= max_utterances:
      break
  out = {k: np.concatenate(v) for k, v in parts.items()}
  return {k: v[:max_utterances] if max_utterances else v for k, v in out.items()}


def _slug(spec: str) -> str:
  base = os.path.splitext(os.path.basename(spec.split(":")[0]))[0]
  arg = spec.split(":", 1)[1] if ":" in spec else ""
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{base}-{arg}" if arg else base)


def is_experiment(spec: str) -> bool:
  """An experiment spec (file.py[:arg]) rather than a run directory."""
  return spec.split(":")[0].endswith(".py")


def resolve_run(spec: str, out_dir: str, train: bool) -> str:
  """A run directory for `spec`: itself, or with `train` an experiment trained into
  OUT/runs/<slug> (resumed, i.e. reused when finished)."""
  if not is_experiment(spec):
    if not os.path.isfile(os.path.join(spec, "config.json")):
      raise TokenlabError(f"{spec} is neither a run directory (no config.json) nor an "
                          f"experiment spec (FILE.py[:ARG]); train it first or pass --train")
    return spec
  if not train:
    raise TokenlabError(f"{spec} is an experiment, not a run directory: pass --train to "
                        f"train it into {out_dir}/runs/ first")
  from tokenlab.config import load_config
  from tokenlab.train.loop import train as train_run
  workdir = os.path.join(out_dir, "runs", _slug(spec))
  config = load_config(spec)
  t = time.perf_counter()
  print(f"[audio-report] training {spec} ({config.train.steps} steps) into {workdir}",
        flush=True)
  train_run(config, workdir)
  print(f"[audio-report] {_slug(spec)}: trained in {time.perf_counter() - t:.0f} s",
        flush=True)
  return workdir


@dataclasses.dataclass
class Tokenizer:
  """A trained audio tokenizer: `method.encode(variables, batch) -> codes (B, t[, K])`,
  optionally `method.decode(variables, codes) -> log-mel` (a TokenlabError: no decoder),
  `method.frame_rate_hz`; `codebook_sizes` one entry per codebook."""
  name: str
  family: str
  config: Any
  method: Any
  variables: Any
  codebook_sizes: tuple[int, ...]
  workdir: str = ""

  @property
  def mel_frames_per_token(self) -> int:
    return int(round(100.0 / self.method.frame_rate_hz))

  def token_lengths(self, mel_lengths: np.ndarray) -> np.ndarray:
    s = self.mel_frames_per_token
    return (np.asarray(mel_lengths) + s - 1) // s

  def fsq_levels(self) -> tuple[int, ...] | None:
    """The FSQ levels when the codes are FSQ indices (first level fastest), else None."""
    model = self.config.model
    if model.get("quantizer", "") == "fsq" and model.get("fsq_levels"):
      return tuple(int(x) for x in model.fsq_levels)
    return None


def load_tokenizers(workdir: str, units: Sequence[int] = (50, 200)) -> list[Tokenizer]:
  """The tokenizer(s) trained in `workdir` (latest checkpoint), frozen
  (`load_frozen_tokenizer`): one for a codec; for a speech-unit run (a method with
  `frozen_variables`, i.e. k-means units fitted after training) one per k in `units`,
  fitting the k-means first where `WORKDIR/units/k{k}.npz` is missing."""
  from tokenlab import registry
  from tokenlab.train.inference import load_config_from_workdir, load_frozen_tokenizer
  config = load_config_from_workdir(workdir)
  method = registry.build_method(config.model)
  if not (hasattr(method, "encode") and hasattr(method, "frame_rate_hz")):
    raise TokenlabError(f"{workdir} holds a '{config.model.name}' run, which has no encode "
                        f"or frame_rate_hz: not an audio tokenizer")
  model = config.model
  if not hasattr(method, "frozen_variables"):
    frozen = load_frozen_tokenizer(workdir)
    sizes = tuple(int(k) for k in frozen.method.codebook_sizes)
    family = model.name + (f" {model.quantizer}" if model.get("quantizer") else "")
    if model.get("quantizer") == "fsq":
      name = f"{family} {'x'.join(str(v) for v in model.fsq_levels)}"
    else:
      name = f"{family} {len(sizes)}x{sizes[0]}"
    return [Tokenizer(name, family, config, frozen.method, frozen.variables, sizes, workdir)]
  out = []
  for k in units:
    if not os.path.exists(os.path.join(workdir, "units", f"k{k}.npz")):
      from tokenlab.methods import speech_ssl   # the unit run's own fitting (k-means)
      print(f"[audio-report] fitting k={k} units of {workdir}", flush=True)
      speech_ssl.fit_units(workdir, k)
    frozen = load_frozen_tokenizer(workdir, units=k)
    family = f"{model.name} units"
    out.append(Tokenizer(f"{family} k={k}", family, config, frozen.method, frozen.variables,
                         (int(k),), workdir))
  return out


# --- features and rows ----------------------------------------------------------------------

def fsq_digit_features(codes: np.ndarray, levels: Sequence[int]) -> np.ndarray:
  """FSQ indices (B, T) -> one-hot of each dimension's level, float32 (B, T, sum(levels)).
  The index is sum_d digit_d * prod(levels[:d]) (tokenlab.nn.quantizers.FSQ's basis)."""
  basis = np.concatenate([[1], np.cumprod(levels)[:-1]]).astype(np.int64)
  digits = (np.asarray(codes, np.int64)[..., None] // basis) % np.asarray(levels)
  return audio.code_features(digits, list(levels))


def token_features(tok: Tokenizer, codes: np.ndarray) -> np.ndarray:
  """The probes' per-frame features of a tokenizer's codes (see the module docstring)."""
  levels = tok.fsq_levels()
  if levels is not None:
    return fsq_digit_features(codes, levels)
  sizes = list(tok.codebook_sizes)
  if sum(sizes) > MAX_ONE_HOT:
    raise TokenlabError(f"{tok.name}: one-hot features of {sum(sizes)} codes are too wide "
                        f"for the probes (at most {MAX_ONE_HOT})")
  return audio.code_features(codes, sizes)


def _batched(fn, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
  """fn(*chunks) over the leading axis in fixed-size chunks (the last one padded)."""
  n, out = len(arrays[0]), []
  for start in range(0, n, batch_size):
    chunk = [a[start:start + batch_size] for a in arrays]
    pad = batch_size - len(chunk[0])
    if pad:
      chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) for c in chunk]
    out.append(np.asarray(fn(*chunk))[:batch_size - pad])
  return np.concatenate(out)


def encode(tok: Tokenizer, corpus: dict[str, np.ndarray], batch_size: int = 50) -> np.ndarray:
  import jax
  fn = jax.jit(lambda v, mel, n: tok.method.encode(
      v, {"mel": mel, "mel_lengths": n, "mask": np.ones(len(n), np.float32)}))
  return _batched(lambda mel, n: fn(tok.variables, mel, n),
                  (corpus["mel"], corpus["mel_lengths"]), batch_size)


def decode(tok: Tokenizer, codes: np.ndarray, frames: int, batch_size: int = 50) -> np.ndarray:
  """Log-mel (N, frames, F) of codes: the decoder's output cropped (or floor-padded)."""
  import jax
  fn = jax.jit(lambda v, c: tok.method.decode(v, c))
  mel = _batched(lambda c: fn(tok.variables, c), (codes,), batch_size)
  if mel.shape[1] < frames:
    mel = np.pad(mel, ((0, 0), (0, frames - mel.shape[1]), (0, 0)),
                 constant_values=math.log(1e-5))
  return mel[:, :frames]


def griffin_lim_si_snr(recon_mel: np.ndarray, corpus: dict[str, np.ndarray], count: int,
                       n_iter: int = 32, batch_size: int = 16) -> float:
  """Mean SI-SNR (dB) of the Griffin-Lim waveforms of the first `count` reconstructions
  against the original waveforms (tokenlab.nn.audio.mel_to_waveform, zero initial phase)."""
  import jax
  from tokenlab.nn import audio as audio_nn
  count = min(count, len(recon_mel))
  samples = corpus["waveform"].shape[1]
  fn = jax.jit(lambda m: audio_nn.mel_to_waveform(m, length=samples, n_iter=n_iter))
  wave = _batched(fn, (recon_mel[:count].astype(np.float32),), min(batch_size, count))
  return float(np.mean(audio.si_snr(corpus["waveform"][:count], wave,
                                    corpus["lengths"][:count])))


def probes(train_feats: np.ndarray, train_lengths: np.ndarray, test_feats: np.ndarray,
           test_lengths: np.ndarray, corpora: dict[str, dict[str, np.ndarray]],
           mel_frames_per_token: int) -> dict[str, float]:
  """Phoneme (frame) and speaker (utterance) probe accuracies of per-frame features whose
  frames each pool `mel_frames_per_token` mel frames."""
  s = mel_frames_per_token
  hop, offset = audio.MEL_HOP * s, audio.MEL_HOP * (s - 1) / 2
  labels = {}
  for split, feats in (("train", train_feats), ("validation", test_feats)):
    c = corpora[split]
    labels[split] = audio.frame_labels(c["phonemes"], c["phoneme_starts"], c["phoneme_ends"],
                                       feats.shape[1], hop, offset)
  phone = audio.phoneme_probe(train_feats, labels["train"], test_feats, labels["validation"])
  speaker = audio.speaker_probe(train_feats, train_lengths, corpora["train"]["speaker"],
                                test_feats, test_lengths, corpora["validation"]["speaker"])
  return {"phoneme_probe": phone["accuracy"],
          "phoneme_probe_majority": phone["majority_accuracy"],
          "speaker_probe": speaker["accuracy"],
          "speaker_probe_majority": speaker["majority_accuracy"]}


def reconstruction(recon: np.ndarray, corpora: dict[str, dict[str, np.ndarray]], recognizer,
                   si_snr_utterances: int) -> dict[str, float]:
  """mel-L1, Griffin-Lim SI-SNR and PER of validation reconstructions (N, T, F)."""
  val = corpora["validation"]
  out = {"mel_l1": audio.mel_l1(val["mel"], recon, val["mel_lengths"]),
         "per": audio.phoneme_error_rate(recognizer, recon, val["mel_lengths"],
                                         val["phonemes"])}
  if si_snr_utterances:
    out["si_snr"] = griffin_lim_si_snr(recon, val, si_snr_utterances)
  return out


def trivial_rows(corpora: dict[str, dict[str, np.ndarray]], recognizer,
                 si_snr_utterances: int) -> list[dict[str, Any]]:
  """The input log-mel row (upper bound) and the mean-mel decoder row (lower bound)."""
  train, val = corpora["train"], corpora["validation"]
  bins = val["mel"].shape[-1]
  real = audio.valid_frames(train["mel_lengths"], train["mel"].shape[1])
  mean = train["mel"][real].mean(0)
  rows = []
  row = {"name": INPUT_ROW, "family": "trivial", "bits_per_second": 100.0 * 32 * bins,
         **reconstruction(val["mel"], corpora, recognizer, si_snr_utterances),
         **probes(train["mel"], train["mel_lengths"], val["mel"], val["mel_lengths"],
                  corpora, 1)}
  rows.append(row)
  recon = np.broadcast_to(mean, val["mel"].shape).astype(np.float32)
  const = lambda c: np.zeros(c["mel"].shape[:2] + (1,), np.float32)   # no information
  row = {"name": MEAN_ROW, "family": "trivial", "bits_per_second": 0.0,
         **reconstruction(recon, corpora, recognizer, si_snr_utterances),
         **probes(const(train), train["mel_lengths"], const(val), val["mel_lengths"],
                  corpora, 1)}
  rows.append(row)
  return rows


def tokenizer_row(tok: Tokenizer, corpora: dict[str, dict[str, np.ndarray]], recognizer,
                  si_snr_utterances: int) -> dict[str, Any]:
  """Every column of one tokenizer."""
  train, val = corpora["train"], corpora["validation"]
  sizes = list(tok.codebook_sizes)
  codes = {"train": encode(tok, train), "validation": encode(tok, val)}
  lengths = {s: tok.token_lengths(corpora[s]["mel_lengths"]) for s in codes}
  row: dict[str, Any] = {"name": tok.name, "family": tok.family, "workdir": tok.workdir,
                         "frame_rate_hz": float(tok.method.frame_rate_hz),
                         "codebook_sizes": sizes,
                         "bits_per_second": audio.bitrate(tok.method.frame_rate_hz, sizes)}
  row.update(audio.codebook_stats(codes["validation"], sizes, lengths["validation"]))
  try:
    recon = decode(tok, codes["validation"], val["mel"].shape[1])
  except TokenlabError:   # units: no decoder, so no reconstruction columns
    recon = None
  if recon is not None:
    row.update(reconstruction(recon, corpora, recognizer, si_snr_utterances))
  feats = {s: token_features(tok, codes[s]) for s in codes}
  row.update(probes(feats["train"], lengths["train"], feats["validation"],
                    lengths["validation"], corpora, tok.mel_frames_per_token))
  lm = audio.token_lm_perplexity(codes["train"], lengths["train"], codes["validation"],
                                 lengths["validation"], sizes)
  row["lm_perplexity"], row["lm_bits_per_frame"] = lm["perplexity"], lm["bits_per_frame"]
  return row


# --- output ---------------------------------------------------------------------------------

def _cell(key: str, value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, str):
    return value
  if key in ("per", "phoneme_probe", "speaker_probe", "usage"):
    return f"{100 * value:.1f}%"
  if key == "bits_per_second":
    return f"{value:,.0f}"
  if key in ("perplexity", "lm_perplexity"):
    return f"{value:,.1f}"
  return f"{value:.2f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A markdown table of the report's columns ('-': not applicable)."""
  head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
  rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
  lines = [head, rule]
  for row in rows:
    lines.append("| " + " | ".join(_cell(k, row.get(k)) for _, k in COLUMNS) + " |")
  return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: str) -> str:
  """report.png: bitrate (log x) against mel-L1, PER and the phoneme probe; one line per
  tokenizer family, the trivial rows as horizontal lines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker
  panels = (("mel_l1", "mel-L1 (log-mel)"), ("per", "PER of reconstructions"),
            ("phoneme_probe", "phoneme probe accuracy"))
  fig, axes = plt.subplots(1, 3, figsize=(16, 4))
  families = [f for f in dict.fromkeys(r["family"] for r in rows) if f != "trivial"]
  for ax, (key, title) in zip(axes, panels):
    for i, fam in enumerate(families):
      pts = sorted((r["bits_per_second"], r[key]) for r in rows
                   if r["family"] == fam and r.get(key) is not None)
      if pts:
        ax.plot(*zip(*pts), "o-", color=f"C{i}", label=fam)
    for r, style in ((r, "--" if r["name"] == INPUT_ROW else ":") for r in rows
                     if r["family"] == "trivial"):
      if r.get(key) is not None:
        ax.axhline(r[key], color="k", ls=style, lw=1, label=r["name"])
    ax.set_xscale("log")
    rates = sorted({r["bits_per_second"] for r in rows
                    if r["family"] != "trivial" and r.get(key) is not None})
    # Ticks at the tokenizers' rates, a label only where it clears the last one (log axis).
    ticks = [v for i, v in enumerate(rates) if i == 0 or v / rates[i - 1] > 1.0]
    shown, labels = 0.0, []
    for v in ticks:
      labels.append(f"{v:.0f}" if v > 1.12 * shown else "")
      shown = v if labels[-1] else shown
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("bitrate (bits/s)")
    ax.set_title(title, fontsize=10)
  legend = {}
  for ax in axes:   # every family and bound once (units have no reconstruction panels)
    for handle, label in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(label, handle)
  fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=8)
  fig.suptitle("audio tokens on `speech` (validation): reconstruction, intelligibility, probe",
               fontsize=10)
  fig.tight_layout(rect=(0, 0, 0.87, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _same_corpus(config: Any, reference: Any, what: str) -> None:
  data, ref = config.data, reference.data
  if data.name != "speech" or ref.name != "speech":
    raise TokenlabError(f"{what}: the audio report reads the `speech` corpus; this run uses "
                        f"'{data.name}'")
  if data.options.to_dict() != ref.options.to_dict() or data.mel_bins != ref.mel_bins:
    raise TokenlabError(f"{what}: trained on other speech options or mel_bins "
                        f"({data.options.to_dict()}, mel_bins {data.mel_bins}) than the "
                        f"recogniser ({ref.options.to_dict()}, mel_bins {ref.mel_bins}); "
                        f"train both on one corpus")


def main(tokenizers: Sequence[str], *, recognizer: str = "", out_dir: str = "audio_report",
         train: bool = False, max_utterances: int = 0, si_snr_utterances: int = 32,
         units: Sequence[int] = (50, 200)) -> list[dict[str, Any]]:
  """Trains (with `train`) and evaluates; prints the table; writes report.{md,json,png}."""
  from tokenlab.train.inference import load_config_from_workdir
  t0 = time.perf_counter()
  tokenizers = list(tokenizers) or (list(DEFAULT_TOKENIZERS) if train else [])
  if not tokenizers:
    raise TokenlabError("name tokenizer run directories, or pass --train to train the "
                        "default set: " + ", ".join(DEFAULT_TOKENIZERS))
  recognizer = recognizer or (DEFAULT_RECOGNIZER if train else "")
  if not recognizer:
    raise TokenlabError("--recognizer: a phoneme_recognizer run directory (or pass --train "
                        f"to train {DEFAULT_RECOGNIZER})")
  os.makedirs(out_dir, exist_ok=True)
  timings: dict[str, float] = {}
  rec_dir = resolve_run(recognizer, out_dir, train)
  runs = [resolve_run(spec, out_dir, train) for spec in tokenizers]
  timings["training_s"] = time.perf_counter() - t0
  rec_config = load_config_from_workdir(rec_dir)
  for spec, run in zip(tokenizers, runs):
    _same_corpus(load_config_from_workdir(run), rec_config, spec)
  rec = audio.load_recognizer(rec_dir)
  corpora = {split: load_corpus(rec_config.data, split, max_utterances)
             for split in ("train", "validation")}
  print(f"[audio-report] corpus: {len(corpora['train']['mel'])} train and "
        f"{len(corpora['validation']['mel'])} validation utterances, "
        f"{corpora['train']['mel'].shape[-1]} mel bins", flush=True)
  t = time.perf_counter()
  rows = trivial_rows(corpora, rec, si_snr_utterances)
  print(f"[audio-report] trivial rows in {time.perf_counter() - t:.0f} s", flush=True)
  for spec, run in zip(tokenizers, runs):
    for tok in load_tokenizers(run, units):
      t = time.perf_counter()
      rows.append(tokenizer_row(tok, corpora, rec, si_snr_utterances))
      rows[-1]["spec"] = spec
      print(f"[audio-report] {tok.name} ({rows[-1]['bits_per_second']:.0f} bits/s) in "
            f"{time.perf_counter() - t:.0f} s", flush=True)
  # Trivial rows first, then tokenizers by family and bitrate.
  rows = rows[:2] + sorted(rows[2:], key=lambda r: (r["family"], r["bits_per_second"]))
  timings["total_s"] = time.perf_counter() - t0
  table = format_table(rows)
  print(table)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(f"# Audio-token benchmark\n\n{table}\n\nRecogniser: {rec_dir}. Validation "
            f"utterances: {len(corpora['validation']['mel'])}; SI-SNR over the first "
            f"{si_snr_utterances}. Wall time {timings['total_s']:.0f} s.\n")
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump({"rows": rows, "recognizer": rec_dir, "tokenizers": tokenizers,
               "max_utterances": max_utterances, "si_snr_utterances": si_snr_utterances,
               "units": list(units),
               "timings": timings}, f, indent=1, default=float)
  plot(rows, os.path.join(out_dir, "report.png"))
  print(f"[audio-report] wrote {out_dir}/report.md, report.json, report.png "
        f"({timings['total_s']:.0f} s)", flush=True)
  return rows
