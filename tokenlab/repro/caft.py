"""Mini-reproduction of concept-aware fine-tuning, CAFT (Chen et al., arXiv 2506.07833).

Claim: fine-tuning with auxiliary multi-token heads (CAFT) learns new multi-token concepts
better than next-token fine-tuning, with the heads dropped at inference.

Setup (tokenlab.methods.caft's concept world; 64 tokens, token 0 separates words):
1. pretrain: a 2-layer d=64 transformer LM on general text (200 Zipf words of 1-3 tokens),
   next-token only, 600 steps.
2. heads: 4 auxiliary heads (one decoder layer each, shared unembedding) trained alone on
   general text, base frozen, 200 steps (the paper's stage 1).
3. finetune, from (2): a domain of 24 new concept words (5 tokens each, never in the general
   text), each announced by its own cue word, in a fixed set of 128 sequences x 64 tokens;
   250 steps of next-token fine-tuning (alpha = 0) vs CAFT (alpha = 0.1, gamma = 0.8,
   constant schedule), seeds 0, 1, 2 (a seed sets the order of the fine-tuning batches; both
   arms start from the same stage-1 parameters).
Metrics on fresh domain text with the base head only (heads dropped): NLL of concept tokens,
accuracy of a concept's first token (needs the cue -> concept link), and exact match of a
whole concept (every token the argmax = greedy generation of the concept after its cue).

Verdict rule (fixed before the runs): (a) CAFT's concept NLL is lower than next-token's in
every seed; (b) CAFT's concept exact match is higher in every seed. held = both; partly =
one, or both on the seed mean only; did not hold = otherwise.
"""

from __future__ import annotations

import os

import numpy as np

from tokenlab.repro import HELD, NOT_HELD, PARTLY, Context, Report

CLAIM = ("Fine-tuning with auxiliary multi-token heads (CAFT) learns new multi-token "
         "concepts better than next-token fine-tuning; the heads are dropped at inference.")

EXPERIMENT = "experiments/caft.py"
METRICS = (("eval/concept_nll", "concept NLL nats"), ("eval/concept_exact", "concept exact match"),
           ("eval/concept_first_acc", "concept first-token acc"), ("eval/loss", "domain NLL nats"))


def run(ctx: Context) -> Report:
  size = "tiny" if ctx.quick else "small"
  quick = ["--config.train.steps=2", "--config.train.eval_batches=1",
           "--config.task.num_train=8"] if ctx.quick else []
  rows = []
  heads_dir = os.path.abspath(ctx.path("heads"))
  if ctx.quick:  # Smoke test: one CAFT fine-tune from scratch (init_from has a unit test).
    out = ctx.train(f"{EXPERIMENT}:size={size},stage=finetune,alpha=0.1", "caft_s0", quick)
    rows += [("caft seed 0", label, float(out[key])) for key, label in METRICS]
    return Report(CLAIM, rows, NOT_HELD, "quick run: nothing compared")

  pre = ctx.train(f"{EXPERIMENT}:size={size},stage=pretrain", "pretrain", [])
  pre_dir = os.path.abspath(ctx.path("pretrain"))
  heads = ctx.train(f"{EXPERIMENT}:size={size},stage=heads,init_from={pre_dir}", "heads", [])
  rows += [("pretrain", "domain NLL nats (before fine-tuning)", float(pre["eval/loss"])),
           ("pretrain", "concept NLL nats (before fine-tuning)", float(pre["eval/concept_nll"])),
           ("heads (stage 1)", "head 1..4 train loss", " / ".join(
               f"{heads[f'train/head_{i}_loss']:.3f}" for i in range(1, 5)))]
  seeds = [ctx.seed, ctx.seed + 1, ctx.seed + 2]
  res = {"ntp": [], "caft": []}
  for seed in seeds:
    for arm, alpha in (("ntp", 0.0), ("caft", 0.1)):
      out = ctx.train(f"{EXPERIMENT}:size={size},stage=finetune,alpha={alpha},"
                      f"init_from={heads_dir}", f"{arm}_s{seed}", [f"--config.seed={seed}"])
      res[arm].append(out)
      rows += [(f"{arm} seed {seed}", label, float(out[key])) for key, label in METRICS]
  mean = {a: {k: float(np.mean([o[k] for o in res[a]])) for k, _ in METRICS} for a in res}
  std = {a: {k: float(np.std([o[k] for o in res[a]])) for k, _ in METRICS} for a in res}
  for a in res:
    rows += [(f"{a} mean+-std", label, f"{mean[a][k]:.4f} +- {std[a][k]:.4f}")
             for k, label in METRICS]
  nll_all = all(c["eval/concept_nll"] < n["eval/concept_nll"]
                for c, n in zip(res["caft"], res["ntp"]))
  ex_all = all(c["eval/concept_exact"] > n["eval/concept_exact"]
               for c, n in zip(res["caft"], res["ntp"]))
  nll_mean = mean["caft"]["eval/concept_nll"] < mean["ntp"]["eval/concept_nll"]
  ex_mean = mean["caft"]["eval/concept_exact"] > mean["ntp"]["eval/concept_exact"]
  if nll_all and ex_all:
    verdict = HELD
  elif nll_all or ex_all or (nll_mean and ex_mean):
    verdict = PARTLY
  else:
    verdict = NOT_HELD
  reason = (f"concept NLL CAFT {mean['caft']['eval/concept_nll']:.4f} vs next-token "
            f"{mean['ntp']['eval/concept_nll']:.4f} (lower in every seed: "
            f"{'yes' if nll_all else 'no'}); concept exact match CAFT "
            f"{mean['caft']['eval/concept_exact']:.3f} vs {mean['ntp']['eval/concept_exact']:.3f}"
            f" (higher in every seed: {'yes' if ex_all else 'no'})")
  notes = ("Both arms fine-tune all parameters from the same stage-1 checkpoint for the same "
           "steps; CAFT's step costs more (4 extra decoder layers and unembeddings). "
           "Metrics use the base head only.")
  figures = [_plot(ctx, res, seeds)]
  return Report(CLAIM, rows, verdict, reason, figures, notes)


def _plot(ctx: Context, res: dict, seeds: list[int]) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
  for ax, (key, label) in zip(axes, METRICS[:3]):
    for i, arm in enumerate(("ntp", "caft")):
      vals = [o[key] for o in res[arm]]
      ax.scatter([i] * len(vals), vals, color=f"C{i}")
      ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.4)
    ax.set_xticks([0, 1], ["next-token", "CAFT"])
    ax.set_title(label, fontsize=9)
  fig.tight_layout()
  path = ctx.path("caft.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
