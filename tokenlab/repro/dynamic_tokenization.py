"""Mini-reproduction of retrofitting an LM with dynamic tokenization (Feher, Vulic,
Minixhofer, arXiv 2411.18553), under the protocol.

The paper's claim: merging frequent subword pairs within words per batch (batch-level BPE)
and embedding the merged tokens with a ZeTT hypernetwork shortens sequences substantially
(> 20% on XNLI with XLM-R) while costing little (< 2% of task performance); the
hypernetwork's embeddings are what makes the merged tokens usable.

Here, per seed, on the tokenizer-transfer harness of issue 20:

1. The source LM: experiments/dynamic_tokenization.py:size=small,stage=source (ZeTT's
   source: transformer_lm, d_model 128, 4 layers, T0 = sentencepiece:1024 on the English
   `multilingual` corpus, 100 steps; the zett and tokenadapt reproductions' configuration).
2. The hypernetwork: stage=hyper, ZeTT's (tokenlab/methods/zett.py), 80 steps (zett's own
   reproduction: 150; cut to fit this run's 10-minute budget).
3. The sweep: the 278 validation strings in merge batches of 32 documents, m = 8, 32, 64,
   256 merges per batch (m = 0: T0 itself), the merged tokens' rows by `zett` (the method),
   `mean_subtokens` and `random` (the baselines), and the sequence length vs T0. Scoring
   (second design, `evaluate(scoring='prefill')`): the paper's decoder use, the model reads
   dynamic tokens and predicts with its own vocabulary: every word after a document's first
   is scored as T0's tokens, over T0's outputs, after the dynamic tokens of the words before
   it (bits per character; the same characters for every m; m = 0 is T0's own scoring).
   The first design scored the dynamic tokens themselves over T0 + the batch's new tokens
   (HISTORY); its result is kept in docs/repro/dynamic_tokenization/design1/.

Trivial baselines (arms): the uniform law over T0's vocabulary on the scored text; a count
bigram under T0 (`baselines.docs_bigram_bits_per_char`, scored as the harness scores text,
beside the source LM scored the same way); no merges (T0, m = 0); the merged tokens' rows
from the mean of their subtokens and from the model's own random initialisation. Budget:
every arm reads the same source LM and the same merges; only the new rows differ. The
second design's run reads the first run's trained source LMs and hypernetworks (the same
configurations and seeds; the runner reuses a finished arm).

Checks (declared before the full run). Prerequisites: the source beats the count bigram
(there is a model to retrofit); the merges at m = 64 shorten sequences by >= 20% (the
paper's regime; measured on the data, training-free); random rows for the merged tokens cost
> 0.1 bits/char at m = 64 (the new rows matter: not saturated); zett at m = 64 is below the
uniform law. Claims: zett's rows give lower bits/char than the mean of subtokens at m = 32,
64 and 256; at m = 64 (>= 20% shorter) zett's bits/char are within 2% of T0's (the paper's
"< 2% degradation", read as relative bits per character).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite

CLAIM = ("Batch-level BPE merges within words, with the merged tokens embedded by a ZeTT "
         "hypernetwork, shorten a frozen LM's sequences by > 20% at little cost (< 2%), and "
         "the hypernetwork's embeddings beat the mean of the subtokens.")

EXPERIMENT = "experiments/dynamic_tokenization.py"
BPC = "bits/char"
LEN = "length vs T0"
NEW = "new tokens per batch"
REL = "bits/char vs T0 (relative)"
HARNESS = "bits/char (harness scoring)"
SOURCE = "T0 (m=0)"
UNIFORM = "uniform [T0]"
COUNTS = "bigram (counts) [T0]"
INITS = ("zett", "mean_subtokens", "random")
MERGES = (8, 32, 64, 256)     # the small size's sweep (experiments/dynamic_tokenization.py)
M20 = 64                      # the sweep point of the >= 20% claim
MAX_COST = 0.02               # the paper's "< 2%"
SCORING = "prefill"           # the second design (the first: "vocabulary", HISTORY)
QUICK_MODEL = ("--config.model.num_layers=1", "--config.model.d_model=32",
               "--config.model.num_heads=2")


def arm(init: str, m: int) -> str:
  return f"{init} [m={m}]"


def merges(m: int) -> str:
  return f"merges [m={m}]"


BASELINES = (UNIFORM, COUNTS, SOURCE, arm("random", M20),
             *(arm("mean_subtokens", m) for m in (32, M20, 256)))

CHECKS = (
    prerequisite("source_learned", "the source LM predicts the validation text better than a "
                 "count bigram on the same T0 tokens (both scored as the harness scores text)",
                 (SOURCE, HARNESS), "<", (COUNTS, HARNESS)),
    prerequisite("merges_shorten", f"m = {M20} merges per batch of 32 documents shorten the "
                 f"sequences by at least 20% (the paper's regime)", (merges(M20), LEN), "<=",
                 0.8),
    prerequisite("rows_matter", f"not saturated: random rows for the merged tokens at m = "
                 f"{M20} cost > 0.1 bits/char over T0", (arm("random", M20), BPC), ">",
                 (SOURCE, BPC), by=0.1),
    prerequisite("usable", f"zett at m = {M20} is below the uniform law over T0",
                 (arm("zett", M20), BPC), "<", (UNIFORM, BPC)),
    claim("beats_mean_m32", "zett's rows for the merged tokens give lower bits/char than the "
          "mean of their subtokens at m = 32", (arm("zett", 32), BPC), "<",
          (arm("mean_subtokens", 32), BPC)),
    claim("beats_mean_m64", f"the same at m = {M20}", (arm("zett", M20), BPC), "<",
          (arm("mean_subtokens", M20), BPC)),
    claim("beats_mean_m256", "the same at m = 256 (about word level)", (arm("zett", 256), BPC),
          "<", (arm("mean_subtokens", 256), BPC)),
    claim("small_cost", f"at m = {M20} (>= 20% shorter) zett's bits/char are less than "
          f"{MAX_COST:.0%} above T0's", (arm("zett", M20), REL), "<", MAX_COST),
)
SEEDS = 3

HISTORY = (
    "First design (scoring='vocabulary'; full run of 3 seeds, 13 min 20 s wall at load "
    "average 5-7; its repro.md, repro.json and PNG are in docs/repro/dynamic_tokenization/"
    "design1/): the dynamic tokens themselves were predicted over T0's vocabulary + the "
    "batch's new tokens. Verdict: not assessable. Bits/char fell as m grew for every "
    "initialiser, random rows included (T0 2.334; m = 64, 0.68 x T0's length: random 1.861, "
    "mean_subtokens 1.731, zett 1.841; m = 256: 1.372, 1.172, 1.386), so the prerequisite "
    "rows_matter failed. Reason: a batch's new tokens are its own words, so that vocabulary "
    "is built from the text it scores; picking among a few dozen in-batch words is cheap "
    "next to the pieces T0 spends on them, and the bits never pay for the vocabulary. Its "
    "claims: zett below mean_subtokens at no m (m = 32: 2.108 vs 2.056; 64: 1.841 vs 1.731; "
    "256: 1.386 vs 1.172); small_cost passed only through the same artefact. The second "
    "design keeps every check and changes only the scoring, to the paper's decoder use "
    "(prefill: dynamic tokens are read, T0's tokens are predicted); it reads the first "
    "run's trained source LMs and hypernetworks.")


def run_seed(ctx: Context) -> Trial:
  from tokenlab import registry
  from tokenlab.config import load_config
  from tokenlab.data import get_tokenizer
  from tokenlab.method import random_params
  from tokenlab.methods import dynamic_tokenization as dt
  from tokenlab.methods import zett
  from tokenlab.repro.baselines import docs_bigram_bits_per_char
  from tokenlab.train.init_from import load_params
  from tokenlab.transfer import harness
  from tokenlab.transfer.initializers import Embeddings
  size = "tiny" if ctx.quick else "small"
  spec = f"{EXPERIMENT}:size={size},stage=source"
  # --quick: a one-layer, narrower source (fewer ops to compile; the smoke test's budget).
  shrink = list(QUICK_MODEL) if ctx.quick else []
  config = load_config(spec, [f"--config.seed={ctx.seed}", *shrink])
  dyn = config.dynamic
  sweep = [int(m) for m in dyn.merges.split(",")]
  inits = dyn.inits.split(",")
  hn_dir = ctx.path("source", "hyper")
  src_dir = ctx.path("source", "t0")
  rows = []
  with contextlib.nullcontext() if ctx.quick else compile_cache(ctx.out("jax_cache")):
    old_tok = get_tokenizer(config.data)
    docs = harness.held_out_documents(config.data)
    train_docs = harness.held_out_documents(config.data, "train")
    if ctx.quick:
      # The smoke test (seconds): an untrained tiny source and an untrained hypernetwork
      # (heads at zero, as ZeTT's init has them) handed to the initialiser in memory (no
      # training or init compile), one merge count, two initialisers, a slice of the text.
      hcfg = load_config(f"{EXPERIMENT}:size=tiny,stage=hyper", shrink)
      method = registry.build_method(hcfg.model)
      hp = random_params(method, {"inputs": np.zeros((1, 8), np.int32)}, seed=ctx.seed,
                         scale=0.02)
      hp["hyper"] = _zero_heads(hp["hyper"])
      zett.remember_hypernet(hn_dir, method, hp)
      params = hp["lm"]
      docs, train_docs, alphas = docs[:dyn.batch_docs], train_docs[:100], (0.1,)
      sweep, inits = [0, sweep[-1]], ["zett", "mean_subtokens"]
    else:
      # Source and hypernetwork live one level down, so the runner's per-arm plotting
      # skips them.
      ctx.train(spec, os.path.join("source", "t0"))
      ctx.train(f"{EXPERIMENT}:size={size},stage=hyper,source={src_dir}",
                os.path.join("source", "hyper"))
      params, alphas = load_params(src_dir), (0.003, 0.01, 0.03, 0.1, 0.3)
      rows.append((SOURCE, HARNESS,
                   harness.evaluate(config, params, old_tok, docs)["bits_per_char"]))
    bpc, alpha = docs_bigram_bits_per_char(old_tok, train_docs, docs, alphas)
    rows += [(COUNTS, HARNESS, bpc), (COUNTS, "alpha (2-fold CV)", alpha)]
    cfg = dt.model_config(config.model.to_dict(), dyn.new_slots)
    fresh = None
    if "random" in inits:   # the model's own initialisation at V0 + new_slots rows
      big = config.model.to_dict()
      big["vocab_size"] = cfg.vocab_size + cfg.new_slots
      from ml_collections import ConfigDict
      f = harness.get_embeddings(harness.fresh_params(ConfigDict(big), ctx.seed))
      fresh = Embeddings(f.input[cfg.vocab_size:], f.output[cfg.vocab_size:])
    common = dict(batch_docs=dyn.batch_docs, batch_size=dyn.batch_size,
                  seq_len=config.data.seq_len, aux={"hypernet": hn_dir}, fresh=fresh,
                  scoring=SCORING)
    base = None
    for m in sweep:
      for init in (inits if m else ["mean_subtokens"]):   # m = 0: no new rows to make
        t = time.perf_counter()
        r = dt.evaluate(cfg, params, old_tok, docs, num_merges=m, init=init, **common)
        if not m:
          base = r
          rows += [(SOURCE, BPC, r["bits_per_char"]), (SOURCE, "scored chars",
                                                       r["scored_chars"]),
                   (UNIFORM, BPC, math.log2(old_tok.vocab_size) * r["scored_tokens"]
                    / r["scored_chars"])]
          print(f"[dynamic_tokenization] seed {ctx.seed}: T0 {r['bits_per_char']:.3f} "
                f"bits/char", flush=True)
          continue
        rows += [(arm(init, m), BPC, r["bits_per_char"]),
                 (arm(init, m), REL, r["bits_per_char"] / base["bits_per_char"] - 1.0)]
        if init == inits[0]:   # the same merges for every initialiser
          groups = math.ceil(len(docs) / dyn.batch_docs)
          rows += [(merges(m), LEN, r["tokens"] / base["tokens"]),
                   (merges(m), NEW, r["new_tokens"] / groups)]
        print(f"[dynamic_tokenization] seed {ctx.seed}: {arm(init, m)} "
              f"{r['bits_per_char']:.3f} bits/char, length {r['tokens'] / base['tokens']:.3f}"
              f" x T0 ({time.perf_counter() - t:.1f}s)", flush=True)
  return Trial(rows, {"sweep": sweep, "inits": inits})


def _zero_heads(hyper_params):
  import jax
  return jax.tree_util.tree_map_with_path(
      lambda p, a: np.zeros_like(a) if "head_" in jax.tree_util.keystr(p) else a, hyper_params)


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Bits/char vs sequence length (mean +- std over seeds) per initialiser, with T0, the
  uniform law and the paper's 2% line."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from tokenlab.repro.protocol import seed_values
  per = [seed_values(t.rows) for t in trials]
  warnings.filterwarnings("ignore", "Mean of empty slice|Degrees of freedom", RuntimeWarning)
  sweep = [m for m in trials[0].data["sweep"] if m]
  mean = lambda key: float(np.nanmean([s.get(key, np.nan) for s in per]))
  std = lambda key: float(np.nanstd([s.get(key, np.nan) for s in per]))
  fig, ax = plt.subplots(figsize=(5.5 if not ctx.quick else 4, 3.8))
  x = [1.0] + [mean((merges(m), LEN)) for m in sweep]
  t0 = mean((SOURCE, BPC))
  for init, color in zip(INITS, ("tab:blue", "tab:orange", "tab:gray")):
    if init not in trials[0].data["inits"]:
      continue
    y = [t0] + [mean((arm(init, m), BPC)) for m in sweep]
    e = [std((SOURCE, BPC))] + [std((arm(init, m), BPC)) for m in sweep]
    ax.errorbar(x, y, yerr=e, marker="o", color=color, label=init, capsize=2)
  for xi, m in zip(x[1:], sweep):
    ax.annotate(f"m={m}", (xi, t0), textcoords="offset points", xytext=(0, -12), fontsize=7,
                ha="center")
  ax.axhline(t0 * (1 + MAX_COST), color="k", ls=":", lw=1, label="T0 + 2%")
  ax.axhline(mean((UNIFORM, BPC)), color="r", ls=":", lw=1, label="uniform over T0")
  ax.invert_xaxis()
  ax.set_xlabel("sequence length vs T0 (merges per batch of 32 documents grow ->)")
  ax.set_ylabel("bits per character (same scored text)")
  ax.set_title("dynamic tokenization: length vs bits/char", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.out("dynamic_tokenization.png")
  fig.savefig(path, dpi=60 if ctx.quick else 100)
  plt.close(fig)
  notes = ("Budget: every arm reads the same source LM and the same merges per batch; only "
           "the merged tokens' rows differ. Zero-shot only (no adaptation): the method is "
           "applied at inference.")
  return [path], notes
