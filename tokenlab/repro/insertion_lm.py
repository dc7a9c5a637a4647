"""Mini-reproduction of Insertion Language Models (Patel et al., arXiv 2505.05755) on
star-graph path finding (Bachmann & Nagarajan).

Claim: on star graphs a left-to-right model stays near 1/degree (it learns the Clever-Hans
"child of the previous node" rule and guesses the branch), while an insertion LM, which can
insert the path's nodes in any order (e.g. backwards from the goal), finds the path much more
often.

Setup (tokenlab.data.star_graph; experiments/insertion_lm.py, size=small): degree 3, paths of
5 nodes (start and goal included), node names drawn from 20 ids per graph, edges listed in
random order with a separator, fresh graphs every step. Three arms with the same encoder
size (2 layers, d=64, 4 heads), batch 64, AdamW lr 3e-3 and 2000 steps:
  ar   left-to-right next-token prediction on the answer, greedy decoding;
  mdm  masked diffusion (bidirectional, random-rate masking of the answer), decoding one
       most-confident position per step;
  ilm  insertion LM (joint slot x token softmax, stop head), greedy insertion decoding.
Every arm's input adds learned embeddings of the neighbouring tokens it may see (previous
token; also the next one for the bidirectional MDM and ILM: `neighbour_embed`), so that an
edge lookup is one attention layer. Without them (the first full run, kept in the notes) no
arm learnt even the edge lookup in 2000 steps (a two-layer induction circuit that these small
models form far later), and the claim was not tested at all.
Metric: exact match of the decoded path on 512 held-out graphs (eval/path_exact), and the
accuracy of the node after the start (eval/branch_acc; 1/3 = guessing the branch).

Prerequisite (fixed before the run; without it the run is no test of the claim): the AR
arm learns the edge lookup, i.e. its teacher-forced accuracy on the answer tokens after the
branch node (eval/lookup_acc) is >= 0.9. If it is not, the verdict is "did not hold" with
the reason "prerequisite not met".

Verdict rule (fixed before the first run, unchanged): held = ILM exact match >= AR exact
match + 0.30 and ILM exact match >= 0.60; partly = ILM exact match >= AR exact match + 0.10;
did not hold = otherwise. The MDM arm is reported for context and is not part of the verdict.
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import HELD, NOT_HELD, PARTLY, Context, Report

CLAIM = ("On star-graph path finding (degree 3, path length 5) a left-to-right model stays "
         "near 1/degree while an insertion LM finds the path much more often.")

EXPERIMENT = "experiments/insertion_lm.py"
ARMS = (("ar", "left-to-right (AR)"), ("mdm", "masked diffusion (MDM)"),
        ("ilm", "insertion LM (ILM)"))
METRICS = (("eval/path_exact", "path exact match"), ("eval/branch_acc", "branch accuracy"),
           ("eval/loss", "eval loss (objective's own)"))
LOOKUP = ("eval/lookup_acc", "teacher-forced accuracy after the branch (prerequisite)")
MIN_LOOKUP = 0.9
FIRST_RUN = ("First full run (same setup without neighbour embeddings, 2000 steps per arm; "
             "docs/repro/insertion_lm at commit bda46c9): path exact match AR 0.000, MDM "
             "0.000, ILM 0.000; branch accuracy AR 0.121, MDM 0.107, ILM 0.002; eval loss AR "
             "1.312, MDM 1.395, ILM 2.708 (did not hold); a 6000-step try reached 0.002. Diagnosis: no arm had learnt the "
             "edge lookup (AR teacher-forced accuracy stayed ~0.1 on the tokens after the "
             "branch; only the copied start and goal were right), so nothing was tested. "
             "Probes found no bug in targets, masks, slots or decoding; lr 1e-2, 3 layers, "
             "d=128, 1 head or batch 256 did not help within 600 steps, while adding the "
             "neighbour embeddings made AR learn the lookup in ~200 steps (and plateau at "
             "1/degree) and ILM reach ~0.9 exact match in a 2000-step probe. Changed: "
             "neighbour embeddings for all arms, the prerequisite and the lookup metric; "
             "nothing else (task, sizes, steps, lr and the verdict rule are as before).")
DEGREE = 3


def _train(ctx: Context, arm: str, arg: str, overrides: list[str]):
  from tokenlab.config import load_config
  from tokenlab.methods.insertion_lm import iterator_fns
  spec = f"{EXPERIMENT}:{arg}"
  config = load_config(spec, [f"--config.seed={ctx.seed}", *overrides])
  train_fn, eval_fn = iterator_fns(config)
  return ctx.train(spec, arm, overrides, train_iter_fn=train_fn, eval_iter_fn=eval_fn)


def run(ctx: Context) -> Report:
  size = "tiny" if ctx.quick else "small"
  quick = ["--config.train.steps=2", "--config.train.eval_batches=1"] if ctx.quick else []
  res, rows = {}, []
  for arm, label in (ARMS[-1:] if ctx.quick else ARMS):   # quick: the ILM arm only
    out = _train(ctx, arm, f"size={size},objective={arm},degree={DEGREE},path=5", quick)
    res[arm] = out
    rows += [(label, name, float(out[key])) for key, name in METRICS]
    if arm == "ar":
      rows.append((label, LOOKUP[1], float(out[LOOKUP[0]])))
  if ctx.quick:
    return Report(CLAIM, rows, NOT_HELD, "quick run: nothing compared")
  ilm, ar, mdm = (res[a]["eval/path_exact"] for a in ("ilm", "ar", "mdm"))
  lookup = float(res["ar"][LOOKUP[0]])
  gap = ilm - ar
  if lookup < MIN_LOOKUP:
    verdict = NOT_HELD
  elif gap >= 0.30 and ilm >= 0.60:
    verdict = HELD
  elif gap >= 0.10:
    verdict = PARTLY
  else:
    verdict = NOT_HELD
  met = "met" if lookup >= MIN_LOOKUP else "NOT MET: the run is no test of the claim"
  reason = (f"prerequisite {met} (AR lookup accuracy {lookup:.3f}, needs >= {MIN_LOOKUP}); "
            f"path exact match ILM {ilm:.3f} vs AR {ar:.3f} (gap {gap:+.3f}; held needs "
            f">= +0.30 and ILM >= 0.60); AR branch accuracy "
            f"{res['ar']['eval/branch_acc']:.3f} vs 1/degree = {1 / DEGREE:.3f}; MDM "
            f"{mdm:.3f} (context)")
  notes = ("All arms: same encoder size, batch, optimizer and number of steps on fresh random "
           "graphs; held-out graphs come from a disjoint stream. One seed per arm (CPU "
           "budget). Decoding is greedy for every arm.\n\n" + FIRST_RUN)
  return Report(CLAIM, rows, verdict, reason, [_plot(ctx, res)], notes)


def _plot(ctx: Context, res: dict) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  for ax, (key, label) in zip(axes, METRICS[:2]):
    vals = [res[a][key] for a, _ in ARMS]
    ax.bar(np.arange(len(ARMS)), vals, color=[f"C{i}" for i in range(len(ARMS))])
    ax.axhline(1 / DEGREE, color="gray", ls="--", lw=1, label="1/degree")
    ax.set_xticks(np.arange(len(ARMS)), [a.upper() for a, _ in ARMS])
    ax.set_ylim(0, 1)
    ax.set_title(f"{label} (held-out graphs)", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.path("insertion_lm.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
