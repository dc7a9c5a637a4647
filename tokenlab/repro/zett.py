"""Mini-reproduction of ZeTT, zero-shot tokenizer transfer (Minixhofer et al., NeurIPS 2024),
under the protocol.

The paper's claim: a hypernetwork trained once over many sampled tokenizers, with the source
LM frozen, predicts embeddings for an unseen tokenizer that work zero-shot: far better than
random rows and better than the mean of the old subtoken embeddings (the heuristic
baseline); the paper's toy summary: random >> mean-of-subtokens > hypernetwork in loss.

Here, on the tokenizer-transfer harness of issue 20 (tokenlab/transfer/), per seed:

1. The source LM: experiments/zett.py:size=small,stage=source = experiments/transfer.py's
   transformer_lm (d_model 128, 4 layers) on the English `multilingual` corpus with
   T0 = sentencepiece:1024, 100 steps (the harness's note: 400 steps overfit the corpus).
2. The hypernetwork: stage=hyper, the source frozen, trained with the real trainer over a
   tokenizer sampled per batch (the 256 bytes + frequent corpus substrings drawn with
   Gumbel noise, greedy longest-match encoding; tokenlab/methods/zett.py), LM loss under
   the sampled tokenizer + the auxiliary loss.
3. Two unseen targets, tokenlab's BPE trained on the same corpus (an algorithm and
   vocabularies the hypernetwork never saw): bpe:1024 (a retokenisation) and bpe:2048
   (supertokens: merges across spaces). For each, the rows of `random`, `mean_subtokens`
   and `zett`, scored zero-shot (bits per character of the 278 validation strings,
   `harness.evaluate`).

Trivial baselines (arms): the uniform law over each target vocabulary; a count bigram
(`baselines.docs_bigram_bits_per_char`, alpha by 2-fold CV) under T0 and under each target,
fitted on the training split; the `random` rows (the untrained embedding) and the
`mean_subtokens` rows (the hypernetwork's own starting point: its heads start at zero, so
untrained it predicts the mean of the pieces' rows). Budget: every initialiser is applied to
the same source per seed; only zett has a training phase (that is the method).

Checks (declared before the full run): prerequisites: the source LM beats the count bigram
under T0 and under each target (there is knowledge to transfer); a random swap costs > 0.1 bits/char on each target (not
saturated); zett's rows reach below the uniform law (the LM is usable); the unit-test check
measured on the trained hypernetwork: rows of target tokens T0 also has stay close to the
originals (mean input cosine > 0.9, the threshold declared in tests/test_zett.py). Claims:
zett beats mean_subtokens and random zero-shot, on each target.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite

CLAIM = ("A hypernetwork trained over sampled tokenizers with the source LM frozen predicts "
         "embeddings for an unseen tokenizer that work zero-shot: better than random rows and "
         "better than the mean of the old subtoken embeddings.")

EXPERIMENT = "experiments/zett.py"
EN, SUPER = "en", "supertokens"
BPC = "bits/char"
ZS = "zero-shot bits/char"
TPC = "tokens/char"
COS_IN = "shared-token cosine (input)"
COS_OUT = "shared-token cosine (output)"
SOURCE = "T0 source LM"
COS_THRESHOLD = 0.9     # the unit test's threshold (tests/test_zett.py)


def uniform(t: str) -> str:
  return f"uniform [{t}]"


def counts(t: str) -> str:
  return f"bigram (counts) [{t}]"


def arm(init: str, t: str) -> str:
  return f"{init} [{t}]"


BASELINES = (uniform(EN), uniform(SUPER), counts("T0"), counts(EN), counts(SUPER),
             arm("random", EN), arm("random", SUPER), arm("mean_subtokens", EN),
             arm("mean_subtokens", SUPER))

CHECKS = (
    prerequisite("source_learned", "the source LM predicts its validation text better than "
                 "a count bigram on the same T0 tokens", (SOURCE, BPC), "<",
                 (counts("T0"), BPC)),
    prerequisite("worth_transferring_en", "the source LM (with T0) predicts the text better "
                 "than a count bigram fitted under bpe:1024 (the knowledge to transfer exists)",
                 (SOURCE, BPC), "<", (counts(EN), BPC)),
    prerequisite("worth_transferring_super", "the same against the count bigram under "
                 "bpe:2048", (SOURCE, BPC), "<", (counts(SUPER), BPC)),
    prerequisite("swap_costs_en", "not saturated: swapping to bpe:1024 with random rows "
                 "costs the model > 0.1 bits/char", (arm("random", EN), ZS), ">",
                 (SOURCE, BPC), by=0.1),
    prerequisite("swap_costs_super", "not saturated: the same for bpe:2048 (supertokens)",
                 (arm("random", SUPER), ZS), ">", (SOURCE, BPC), by=0.1),
    prerequisite("usable_en", "zett's rows give bits/char below the uniform law over bpe:1024",
                 (arm("zett", EN), ZS), "<", (uniform(EN), BPC)),
    prerequisite("usable_super", "the same over bpe:2048", (arm("zett", SUPER), ZS), "<",
                 (uniform(SUPER), BPC)),
    prerequisite("shared_kept", f"the trained hypernetwork keeps the bpe:1024 tokens T0 also "
                 f"has near their original input rows (mean cosine > {COS_THRESHOLD})",
                 (arm("zett", EN), COS_IN), ">", COS_THRESHOLD),
    claim("beats_mean_en", "zero-shot, zett's rows give lower bits/char than the mean of "
          "subtokens on the unseen bpe:1024", (arm("zett", EN), ZS), "<",
          (arm("mean_subtokens", EN), ZS)),
    claim("beats_mean_super", "the same on the unseen supertoken vocabulary bpe:2048",
          (arm("zett", SUPER), ZS), "<", (arm("mean_subtokens", SUPER), ZS)),
    claim("beats_random_en", "zero-shot, zett's rows give lower bits/char than random rows "
          "on bpe:1024", (arm("zett", EN), ZS), "<", (arm("random", EN), ZS)),
    claim("beats_random_super", "the same on bpe:2048", (arm("zett", SUPER), ZS), "<",
          (arm("random", SUPER), ZS)),
)
SEEDS = 3

INITS = ("random", "mean_subtokens", "zett")
QUICK_MODEL = ("--config.model.num_layers=1", "--config.model.d_model=32",
               "--config.model.num_heads=2")
ALPHAS = (0.003, 0.01, 0.03, 0.1, 0.3)   # the count bigram's add-alpha grid (2-fold CV)


def _untrained(method, example: dict, seed: int) -> dict:
  """Parameters of `method`'s shapes drawn in numpy (N(0, 0.02), norm scales 1, zett's
  heads 0 as its init has them): the --quick source and hypernetwork, no init compile."""
  import flax.linen as nn
  import jax
  shapes = nn.meta.unbox(jax.eval_shape(method.init, jax.random.key(seed), example))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return np.ones(s.shape, s.dtype)
    if "head_in" in name or "head_out" in name:
      return np.zeros(s.shape, s.dtype)
    return (0.02 * rng.standard_normal(s.shape)).astype(s.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def run_seed(ctx: Context) -> Trial:
  import jax.numpy as jnp
  from tokenlab import registry
  from tokenlab.config import load_config
  from tokenlab.data import get_tokenizer
  from tokenlab.methods import zett
  from tokenlab.repro.baselines import docs_bigram_bits_per_char
  from tokenlab.train.init_from import load_params
  from tokenlab.transfer import harness
  size = "tiny" if ctx.quick else "small"
  spec = f"{EXPERIMENT}:size={size},stage=source"
  # --quick: a one-layer, narrower source (fewer ops to compile; the smoke test's budget).
  shrink = list(QUICK_MODEL) if ctx.quick else []
  config = load_config(spec, [f"--config.seed={ctx.seed}", *shrink])
  targets = dict(zip((EN, SUPER), config.transfer.targets.split(",")))
  if ctx.quick:   # the smoke test: one target
    targets = {EN: targets[EN]}
  rows, notes = [], {}
  hn_dir = ctx.path("source", "hyper")
  with contextlib.nullcontext() if ctx.quick else compile_cache(ctx.out("jax_cache")):
    old_tok = get_tokenizer(config.data)
    docs = harness.held_out_documents(config.data)
    train_docs = harness.held_out_documents(config.data, "train")
    src_dir = ctx.path("source", "t0")
    if ctx.quick:
      # The smoke test (seconds): an untrained source and an untrained hypernetwork handed
      # to the initialiser in memory (numpy values: no init, training or save compile; the
      # hypernetwork's training step is tested in tests/test_zett.py), zero-shot swaps of one
      # target, the count baseline on a slice of the corpus with a fixed alpha.
      hcfg = load_config(f"{EXPERIMENT}:size=tiny,stage=hyper", shrink)
      method = registry.build_method(hcfg.model)
      hp = _untrained(method, {"inputs": jnp.zeros((1, 8), jnp.int32)}, ctx.seed)
      params = hp["lm"]
      zett.remember_hypernet(hn_dir, method, hp)
      train_docs, docs, alphas = train_docs[:100], docs[:48], (0.1,)
    else:
      # Source and hypernetwork live one level down, so the runner's per-arm plotting
      # skips them (finish plots the hypernetwork's curves).
      ctx.train(spec, os.path.join("source", "t0"))
      ctx.train(f"{EXPERIMENT}:size={size},stage=hyper,source={src_dir}",
                os.path.join("source", "hyper"))
      params, alphas = load_params(src_dir), ALPHAS
      src_eval = harness.evaluate(config, params, old_tok, docs)
      rows += [(SOURCE, BPC, src_eval["bits_per_char"]),
               (SOURCE, TPC, src_eval["tokens_per_char"])]
    bpc, alpha = docs_bigram_bits_per_char(old_tok, train_docs, docs, alphas)
    rows += [(counts("T0"), BPC, bpc), (counts("T0"), "alpha (2-fold CV)", alpha)]
    t0_tpc = harness.tokens_per_char(old_tok, docs)
    old = harness.get_embeddings(params)
    for label, target in targets.items():
      new_data = harness.target_data_config(config.data, harness.parse_target(target))
      new_tok = get_tokenizer(new_data)
      bpc, alpha = docs_bigram_bits_per_char(new_tok, train_docs, docs, alphas)
      rows += [(counts(label), BPC, bpc), (counts(label), "alpha (2-fold CV)", alpha)]
      notes[label] = {"target": target,
                      "shared with T0": len(zett.shared_tokens(old_tok, new_tok))}
      for init in INITS:
        t = time.perf_counter()
        new_config, new_params = harness.swap_tokenizer(
            config, params, new_data, init, seed=ctx.seed, aux={"hypernet": hn_dir})
        zs = harness.evaluate(new_config, new_params, new_tok, docs)
        rows.append((arm(init, label), ZS, zs["bits_per_char"]))
        if init == "zett":   # every arm of a target scores the same tokens
          made = harness.get_embeddings(new_params)
          n = new_tok.vocab_size
          cin, cout = zett.shared_cosines(
              old_tok, harness.Embeddings(old.input[:old_tok.vocab_size],
                                          old.output[:old_tok.vocab_size]),
              new_tok, harness.Embeddings(made.input[:n], made.output[:n]))
          rows += [(uniform(label), BPC, math.log2(new_tok.vocab_size) * zs["scored_tokens"]
                    / zs["scored_chars"]), (arm(init, label), TPC, zs["tokens_per_char"]),
                   (arm(init, label), "length vs T0", zs["tokens_per_char"] / t0_tpc),
                   (arm(init, label), COS_IN, cin), (arm(init, label), COS_OUT, cout)]
        print(f"[zett] seed {ctx.seed}: {arm(init, label)} done in "
              f"{time.perf_counter() - t:.0f}s", flush=True)
  return Trial(rows, notes)


def _plot_curves(ax, workdir: str) -> None:
  """The hypernetwork's training losses (LM and auxiliary) of every seed."""
  import json
  for s, seed_dir in enumerate(sorted(d for d in os.listdir(workdir) if d.startswith("seed"))):
    path = os.path.join(workdir, seed_dir, "source", "hyper", "metrics.jsonl")
    if not os.path.exists(path):
      continue
    steps, loss, aux = [], [], []
    with open(path) as f:
      for line in f:
        r = json.loads(line)
        if "train/loss" in r:
          steps.append(r["step"])
          loss.append(r["train/loss"])
          aux.append(r.get("train/aux_loss", np.nan))
    ax.plot(steps, loss, color="tab:blue", alpha=0.7, label="LM loss (nats)" if s == 0 else None)
    ax.plot(steps, aux, color="tab:orange", alpha=0.7, label="aux loss" if s == 0 else None)
  ax.set_xlabel("hypernetwork step")
  ax.set_title("hypernetwork training (sampled tokenizers)", fontsize=9)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Zero-shot bits/char per initialiser and target (mean +- std over seeds) beside the
  source, uniform and count lines; the hypernetwork's training curve."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from tokenlab.repro.protocol import seed_values
  per = [seed_values(t.rows) for t in trials]
  warnings.filterwarnings("ignore", "Mean of empty slice|Degrees of freedom", RuntimeWarning)
  # --quick: its one target's panel only, at a low resolution (the smoke test's seconds).
  fig, axes = plt.subplots(1, 1 if ctx.quick else 3, figsize=(5 if ctx.quick else 14, 3.8),
                           squeeze=False)
  axes = axes[0]
  for ax, label in zip(axes[:2], (EN, SUPER) if not ctx.quick else (EN,)):
    x = np.arange(len(INITS))
    vals = [[s.get((arm(n, label), ZS), np.nan) for s in per] for n in INITS]
    ax.bar(x, np.nanmean(vals, 1), 0.6, yerr=np.nanstd(vals, 1), color="tab:blue")
    for ref, style in ((SOURCE, "k--"), (uniform(label), "r:"), (counts(label), "g-.")):
      v = np.nanmean([s.get((ref, BPC), np.nan) for s in per])
      ax.axhline(v, ls=style[1:], color=style[0], lw=1, label=ref)
    ax.set_xticks(x, INITS, fontsize=8)
    ax.set_title(f"unseen target: {trials[0].data.get(label, {}).get('target', label)}",
                 fontsize=9)
    ax.set_ylabel("zero-shot bits per character")
    ax.legend(fontsize=7)
  if not ctx.quick:
    _plot_curves(axes[2], ctx.workdir)
  fig.tight_layout()
  path = ctx.out("zett.png")
  fig.savefig(path, dpi=60 if ctx.quick else 100)
  plt.close(fig)
  lines = [f"- {label} ({n['target']}): {n['shared with T0']} tokens shared with T0"
           for label, n in trials[0].data.items()]
  lines += ["", "Budget: every initialiser is applied to the same source LM per seed; "
            "zero-shot only (no adaptation steps): the claim is about the starting point."]
  return [path], "\n".join(lines)
