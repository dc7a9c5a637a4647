"""Mini-reproduction of "Toward a Theory of Tokenization in LLMs" (Rajaraman et al.).

Arms, all on the markov source (k=4, p=q=0.8: entropy rate 0.722 bits/char, unigram
entropy 1 bit/char):
  * the same small transformer trained for the same number of steps (and tokens per batch) on
    characters and on BPE tokens with vocabularies 16, 64, 256;
  * count-based unigram models over BPE tokens (vocab 2 = characters, 16, 64, 256) and over
    LZW-dictionary tokens (16, 64, 256, 1024), fitted on train documents;
all measured in bits per character on validation documents.

Verdict rule (fixed before the runs): (a) the character transformer "stalls near the unigram
entropy" when its bits/char is closer to the unigram entropy U than to the entropy rate H;
(b) "tokenized models approach H as the vocabulary grows" when the largest-vocabulary BPE
transformer is closer to H than to U and the BPE transformers do not get worse as the
vocabulary grows (each within 0.02 of monotone). held = (a) and (b); partly = one of them;
did not hold = neither. The unigram-over-tokens rows are reported alongside (claim (c)).
"""

from __future__ import annotations

import json

import numpy as np

from tokenlab.repro import HELD, NOT_HELD, PARTLY, Context, Report

CLAIM = ("On a k-th order Markov source (k > 1), a transformer on characters stalls near the "
         "unigram entropy while the same transformer on BPE tokens approaches the entropy rate "
         "as the vocabulary grows (and even a unigram model over tokens gets close).")

EXPERIMENT = "experiments/tokenization_theory.py"


def _eval_bpc(ctx: Context, arm: str, result: dict) -> float:
  """eval bits/char of an arm: from the train result, else its metrics.jsonl (reused arm)."""
  if "eval/bits_per_byte" in result:
    return float(result["eval/bits_per_byte"])
  with open(ctx.path(arm, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return float([r for r in rows if "eval/bits_per_byte" in r][-1]["eval/bits_per_byte"])


def run(ctx: Context) -> Report:
  from tokenlab.config import load_config
  from tokenlab.data import get_tokenizer, markov
  from tokenlab.data.tokenizers.lzw import LZWTokenizer
  from tokenlab.methods.tokenization_theory import (UnigramTokenModel,
                                                    empirical_conditional_entropy_bits)

  k, p, q = 4, 0.8, 0.8
  steps = ctx.steps(600, 2)
  size = "tiny" if ctx.quick else "small"
  data_over = []
  if ctx.quick:  # A small source, so the smoke test builds data and tokenizers in seconds.
    data_over = ["--config.data.options.num_train=50", "--config.data.options.length=256",
                 "--config.data.options.num_validation=10", "--config.train.eval_batches=2"]
  common = [f"--config.train.steps={steps}", *data_over]
  H, U = markov.entropy_rate_bits(p, q), markov.unigram_entropy_bits(p, q)
  rows: list[tuple[str, str, float | str]] = [
      ("source", "entropy rate H (exact)", H), ("source", "unigram entropy U (exact)", U)]

  # --quick trains one tiny arm: it smoke-tests the pipeline, the full run has four.
  arms = ([] if ctx.quick else [("char", "bytes", 256)]) + [
      (f"bpe{v}", "bpe", v) for v in ((16,) if ctx.quick else (16, 64, 256))]
  bpc = {}
  for name, tok, vocab in arms:
    arg = f"size={size},tokenizer={tok},vocab={vocab},k={k},p={p},q={q}"
    result = ctx.train(f"{EXPERIMENT}:{arg}", name, common)
    bpc[name] = _eval_bpc(ctx, name, result)
    rows.append((f"transformer {name}", "bits/char", bpc[name]))

  # Count-based unigram models over tokens.
  cfg = load_config(f"{EXPERIMENT}:size=small,tokenizer=bpe,vocab=16,k={k},p={p},q={q}",
                    data_over)
  opts = cfg.data.options.to_dict()
  as_text = lambda a: [(d + ord("0")).tobytes() for d in a]
  train_docs = as_text(markov.documents("train", opts))[:500]
  val_docs = as_text(markov.documents("validation", opts))
  rows.append(("source", "plug-in H(x_n | x_{n-k}) of validation",
               empirical_conditional_entropy_bits(val_docs, k)))
  uni = {}
  for vocab in ((2, 16) if ctx.quick else (2, 16, 64, 256)):
    if vocab == 2:
      tok = LZWTokenizer([b"0", b"1"])
    else:
      cfg.data.vocab_size = vocab
      tok = get_tokenizer(cfg.data)
    m = UnigramTokenModel(tok.vocab_size).fit(tok.encode_batch(train_docs))
    uni[f"bpe{vocab}"] = m.bits_per_char(tok.encode_batch(val_docs), tok.token_lengths())
    rows.append((f"unigram over bpe{vocab}" if vocab > 2 else "unigram over chars",
                 "bits/char", uni[f"bpe{vocab}"]))
  lzw_vocabs = (16,) if ctx.quick else (16, 64, 256, 1024)
  for vocab in lzw_vocabs:
    tok = LZWTokenizer.train(train_docs, vocab)
    m = UnigramTokenModel(tok.vocab_size).fit([tok.encode(d) for d in train_docs])
    uni[f"lzw{vocab}"] = m.bits_per_char([tok.encode(d) for d in val_docs], tok.token_lengths())
    rows.append((f"unigram over lzw{vocab}", "bits/char", uni[f"lzw{vocab}"]))

  # Verdict from the measured numbers (rule in the module docstring).
  mid = (H + U) / 2
  bpc.setdefault("char", float("nan"))
  stalls = bpc["char"] > mid
  bpe_names = [n for n, _, _ in arms if n != "char"]
  seq = [bpc[n] for n in bpe_names]
  monotone = all(b <= a + 0.02 for a, b in zip(seq, seq[1:]))
  approaches = seq[-1] < mid and monotone
  verdict = HELD if stalls and approaches else PARTLY if stalls or approaches else NOT_HELD
  reason = (f"char transformer {bpc['char']:.3f} bits/char vs midpoint {mid:.3f} between "
            f"H={H:.3f} and U={U:.3f} ({'stalls near U' if stalls else 'does not stall'}); "
            f"BPE transformers {', '.join(f'{n}={bpc[n]:.3f}' for n in bpe_names)} "
            f"({'approach H' if approaches else 'do not approach H monotonically'})")
  figures = [_plot(ctx, bpc, uni, H, U, bpe_names)]
  notes = (f"Same transformer (d=64, 2 layers, seq 128 tokens, batch 16) and {steps} steps per "
           "arm, so tokenized arms see more characters per step (as with a fixed token "
           "budget). Unigram models: add-0.5 counts on 500 train documents; LZW dictionary "
           "learned by the LZ78 parse of the same documents, greedy longest-match encoding.")
  return Report(CLAIM, rows, verdict, reason, figures, notes)


def _plot(ctx: Context, bpc: dict, uni: dict, H: float, U: float, bpe_names: list) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  vocab = lambda n: int(n.lstrip("bpelzw"))
  ax.plot([vocab(n) for n in bpe_names], [bpc[n] for n in bpe_names], "o-",
          label="transformer on BPE")
  if np.isfinite(bpc["char"]):
    ax.plot([2], [bpc["char"]], "s", ms=8, label="transformer on chars")
  for prefix, style in (("bpe", "^--"), ("lzw", "v--")):
    names = [n for n in uni if n.startswith(prefix)]
    ax.plot([vocab(n) for n in names], [uni[n] for n in names], style,
            label=f"unigram over {prefix.upper()} tokens")
  ax.axhline(H, color="k", lw=1, label=f"entropy rate {H:.3f}")
  ax.axhline(U, color="gray", lw=1, ls=":", label=f"unigram entropy {U:.3f}")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("vocabulary size")
  ax.set_ylabel("bits per character (validation)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.path("bits_per_char.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
