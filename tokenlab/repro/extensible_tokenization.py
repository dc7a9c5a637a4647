"""Mini-reproduction of Extensible Tokenization (Shao et al., arXiv 2401.07793) under the
protocol.

The paper's claim: an extensible embedder that encodes a long context chunk by chunk and
down-scales it by a flexible factor k lets a frozen LLM read far more context than its window
holds, at a small cost per extra token, while keeping what the LLM does with its own window.

Here (tokenlab/methods/extensible_tokenization.py, data tokenlab/data/kv_facts.py):

1. The frozen LM: experiments/extensible_tokenization.py:size=small,stage=lm, a transformer_lm
   (d_model 64, 2 layers, 4 heads) whose window holds 31 positions, trained on key-value
   rows that fit it (16 far tokens with 4 facts among filler, 2 near facts, 7 queries).
   Trained once (seed 0) and shared by every seed, as the paper starts from one given LLM.
2. The embedder: stage=embedder, init_from the LM, `config.train.freeze = '^lm/'`: rows whose
   far part (32 tokens, 8 facts among filler; 2 chunks of 16) does not fit the window with
   the 15 recent positions (47 > 31); k drawn per batch from {2, 4, 8}. One embedder per seed.
3. Evaluation on held-out rows (answers exact): accuracy on queries whose fact is in the far
   part (far-fact accuracy) and in the recent part (near-fact accuracy), for the embedder at
   k = 2, 4, 8, and for the arms below; forward FLOPs per far-context token, counted.

Trivial baselines (arms): `uniform` over the value tokens (1 / num_values); the `answer
prior` (the most frequent answer of training rows); the `truncated LM` (the frozen LM with
the far context cut off: what the window alone allows); the `untrained embedder` (mean
pooling of the raw far embeddings, the method's own starting point) at k = 2 (k = 4, 8 are
reported too). A reference row, not a baseline: the `full context LM`, the frozen LM reading
all 47 positions raw, past the window it was trained on. Budget: the embedder's training steps
are the method; the baselines have none (the LM is the same frozen model everywhere).

Checks (declared before the full run): prerequisites: the frozen LM answers facts in its
window (near-fact accuracy above the answer prior by 0.5); far facts cannot be guessed
without the far context (the truncated LM within 0.1 of uniform on far facts: not
saturated); the embedder learned (its answer NLL at k = 2 below the untrained embedder's).
Claims: the embedder lets the frozen LM answer far facts: far-fact accuracy above the
truncated LM by 0.1 at k = 2, at k = 4 and at k = 8 (one embedder, k flexible); and the
LM's own window is kept: near-fact accuracy with the embedder at k = 2 within 0.05 of the
truncated LM's.

--quick (the test suite) trains one 3-step embedder arm of size=tiny (one k) over an untrained
frozen LM, so it runs one trainer arm, not two; the LM stage is the same trainer path with
transformer_lm's loss.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("An embedder that encodes the far context chunk by chunk and down-scales it by k lets "
         "a frozen LM answer facts beyond its window (at each k of the trained range), while "
         "keeping what it answers from its own window.")

EXPERIMENT = "experiments/extensible_tokenization.py"
FAR = "far-fact accuracy"
NEAR = "near-fact accuracy"
NLL = "answer NLL nats"
FLOPS = "fwd FLOPs per far token"
UNIFORM, PRIOR, TRUNC = "uniform", "answer prior", "truncated LM"
FULL = "full context LM (past its window)"
SCALES = (2, 4, 8)


def ext(k: int) -> str:
  return f"extensible k={k}"


def untrained(k: int) -> str:
  return f"untrained embedder k={k}"


BASELINES = (UNIFORM, PRIOR, TRUNC, untrained(2))

CHECKS = (
    prerequisite("lm_recalls", "the frozen LM answers facts inside its window (near-fact "
                 "accuracy above the answer prior by 0.5)", (TRUNC, NEAR), ">", (PRIOR, NEAR),
                 by=0.5),
    prerequisite("far_not_guessable", "not saturated: without the far context the LM is "
                 "within 0.1 of uniform on far facts", (TRUNC, FAR), "<", (UNIFORM, FAR),
                 by=-0.1),
    prerequisite("embedder_learned", "the trained embedder's answer NLL at k=2 is below the "
                 "untrained embedder's (mean pooling of raw embeddings)", (ext(2), NLL), "<",
                 (untrained(2), NLL)),
    claim("far_k2", "at k=2 the embedder lets the frozen LM answer far facts: accuracy above "
          "the truncated LM by 0.1", (ext(2), FAR), ">", (TRUNC, FAR), by=0.1),
    claim("far_k4", "the same at k=4 (the same embedder)", (ext(4), FAR), ">", (TRUNC, FAR),
          by=0.1),
    claim("far_k8", "the same at k=8 (the same embedder)", (ext(8), FAR), ">", (TRUNC, FAR),
          by=0.1),
    claim("keeps_window", "the LM's own window is kept: near-fact accuracy with the embedder "
          "at k=2 within 0.05 of the truncated LM's", (ext(2), NEAR), ">", (TRUNC, NEAR),
          by=-0.05),
)
SEEDS = 3

LM_STEPS, EMBEDDER_STEPS = 300, 800
EVAL_BATCHES, EVAL_BATCH = 16, 64


def _size(ctx: Context) -> str:
  return "tiny" if ctx.quick else "small"


def _evaluate(method, params, fresh_embedder, batches, scales) -> dict:
  """Sums over `batches` of correct / counted answers per (arm, kind) and the answer NLL,
  all arms in one jitted call per batch (one compile)."""
  import jax
  import jax.numpy as jnp

  from tokenlab.nn.losses import token_nll

  def sums(logits, b):
    correct = (jnp.argmax(logits, -1) == b["targets"]).astype(jnp.float32)
    nll = token_nll(logits, b["targets"])
    return {"far": jnp.sum(correct * b["far_mask"]), "near": jnp.sum(correct * b["near_mask"]),
            "nll": jnp.sum(nll * b["loss_mask"])}

  @jax.jit
  def step(params, fresh_embedder, b):
    out = {TRUNC: sums(method.lm_logits(params["lm"], b["inputs"]), b)}
    full = method.lm_logits(params["lm"], jnp.concatenate([b["far"], b["inputs"]], 1))
    out[FULL] = sums(full[:, b["far"].shape[1]:], b)
    base = {"lm": params["lm"], "embedder": fresh_embedder}
    for k in scales:
      out[ext(k)] = sums(method.logits(params, b, k), b)
      out[untrained(k)] = sums(method.logits(base, b, k), b)
    return out

  total = collections.defaultdict(float)
  counts = collections.defaultdict(float)
  for b in batches:
    for arm, s in jax.device_get(step(params, fresh_embedder, b)).items():
      for name, v in s.items():
        total[(arm, name)] += float(v)
    counts["far"] += float(b["far_mask"].sum())
    counts["near"] += float(b["near_mask"].sum())
    counts["nll"] += float(b["loss_mask"].sum())
  return {(arm, {"far": FAR, "near": NEAR, "nll": NLL}[name]): v / max(counts[name], 1.0)
          for (arm, name), v in total.items()}


def run_seed(ctx: Context) -> Trial:
  import jax

  from tokenlab.config import load_config
  from tokenlab.data.kv_facts import KVFactsIterator
  from tokenlab.methods import extensible_tokenization as et
  from tokenlab.methods.transformer_lm import TransformerLM
  from tokenlab.train.inference import load_trained

  size = _size(ctx)
  # The frozen LM: trained once (seed 0, in the reproduction's folder), shared by all seeds.
  # --quick trains the embedder arm only, over an untrained frozen LM (the LM stage is the
  # same trainer path with transformer_lm's loss; one trainer run is most of a quick run).
  lm_ctx = dataclasses.replace(ctx, workdir=ctx.root or ctx.workdir, seed=0)
  lm_dir = "" if ctx.quick else lm_ctx.path("lm")
  if lm_dir:
    lm_ctx.train(f"{EXPERIMENT}:size={size},stage=lm", "lm",
                 [f"--config.train.steps={LM_STEPS}"])
  exp = f"{EXPERIMENT}:size={size},stage=embedder,init_from={lm_dir}"
  ctx.train(exp, "embedder", [f"--config.train.steps={ctx.steps(EMBEDDER_STEPS)}"])

  config = load_config(exp)
  task = et.task_from_config(config)
  to_batch = lambda rows: et.extended_batch(rows, task.far_len)
  n_eval, eval_batch = (1, 8) if ctx.quick else (EVAL_BATCHES, EVAL_BATCH)
  batches = list(KVFactsIterator(task, eval_batch, 0, to_batch, split="validation",
                                 data_seed=config.task.data_seed, num_batches=n_eval))
  run = load_trained(ctx.path("embedder"), batches[0])
  params = et.numpy_params(run.params)
  if lm_dir:   # config.train.freeze must have kept the LM bit-identical
    lm_run = load_trained(lm_dir, et.lm_batch(next(KVFactsIterator(
        et.task_from_config(load_config(f"{EXPERIMENT}:size={size},stage=lm")), 1, 0))))
    if not all(jax.tree.leaves(jax.tree.map(np.array_equal, params["lm"],
                                            et.numpy_params(lm_run.params)))):
      raise RuntimeError("the LM inside the embedder run differs from the LM run")
  method = run.method
  # The untrained embedder: its output projection is zero at init, so it is mean pooling of
  # the raw embeddings whatever its other (random) weights; the trained ones serve as those.
  fresh = {**params["embedder"], "out": {"kernel": np.zeros_like(
      params["embedder"]["out"]["kernel"])}}
  scales = tuple(method.config.scales)
  values = _evaluate(method, params, fresh, batches, scales)
  rows = [(arm, metric, v) for (arm, metric), v in sorted(values.items())]

  # Trivial predictors: uniform over the values, the most frequent training answer.
  rows += [(UNIFORM, FAR, 1.0 / task.num_values), (UNIFORM, NEAR, 1.0 / task.num_values)]
  train = next(KVFactsIterator(task, 256, ctx.seed, to_batch, data_seed=config.task.data_seed))
  answers = train["targets"][train["loss_mask"] > 0]
  prior = np.bincount(answers).argmax()
  for kind, metric in (("far", FAR), ("near", NEAR)):
    hits = sum(float(((b["targets"] == prior) * b[f"{kind}_mask"]).sum()) for b in batches)
    rows.append((PRIOR, metric, hits / max(sum(float(b[f"{kind}_mask"].sum())
                                               for b in batches), 1.0)))

  # Cost per far-context token (forward FLOPs, counted): embedder + 1/k of an LM position,
  # vs one raw LM position at the full length.
  near = batches[0]["inputs"].shape[1]
  for k in scales:
    rows.append((ext(k), FLOPS, method.context_flops_per_token(k, task.far_len // k + near)))
  rows.append((FULL, FLOPS, TransformerLM(et.lm_config(method.config)).flops_per_token(
      task.far_len + near) / 3.0))
  return Trial(rows, {"values": values, "scales": scales})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Far- and near-fact accuracy vs k (mean +- std over seeds), with the baselines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  scales = trials[0].data["scales"]
  get = lambda arm, metric: np.array([t.data["values"][(arm, metric)] for t in trials])
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for ax, metric in zip(axes, (FAR, NEAR)):
    for name, arm in (("extensible (trained)", ext), ("untrained embedder", untrained)):
      v = np.stack([get(arm(k), metric) for k in scales])
      ax.errorbar(scales, v.mean(1), yerr=v.std(1), marker="o", label=name)
    for arm, style in ((TRUNC, "k--"), (FULL, "g:")):
      ax.axhline(get(arm, metric).mean(), color=style[0], ls=style[1:], label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(scales, [str(k) for k in scales])
    ax.set_xlabel("scaling factor k")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{metric} (mean +- std, {len(trials)} seeds)", fontsize=9)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  path = ctx.out("extensible_tokenization.png")
  fig.savefig(path, dpi=60 if ctx.quick else 100)
  plt.close(fig)
  notes = (f"The frozen LM: {0 if ctx.quick else LM_STEPS} steps (seed 0, shared by every "
           f"seed). Each "
           f"seed's embedder: {ctx.steps(EMBEDDER_STEPS)} steps of batch 32, k drawn per batch "
           f"from {{{', '.join(map(str, scales))}}}. Evaluation: "
           f"{1 if ctx.quick else EVAL_BATCHES} held-out batches of "
           f"{8 if ctx.quick else EVAL_BATCH} rows (the same rows for every arm and seed). "
           "FLOPs: forward, counted with TransformerLM.flops_per_token's formula (training = 3 x "
           "forward): the embedder's chunk-local pass per far token plus 1/k of an LM position, "
           "vs one raw LM position at the full length.")
  return [path], notes
