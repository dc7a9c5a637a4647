"""Mini-reproduction of Insertion Language Models (Patel et al., arXiv 2505.05755) on
star-graph path finding (Bachmann & Nagarajan), under the reproduction protocol
(tokenlab/repro/protocol.py).

Claim: on star graphs a left-to-right model stays near 1/degree (it learns the Clever-Hans
"child of the previous node" rule and guesses the branch), while an insertion LM, which can
insert the path's nodes in any order (e.g. backwards from the goal), finds the path much more
often.

Setup (tokenlab.data.star_graph; experiments/insertion_lm.py, size=small): degree 3, paths of
5 nodes (start and goal included), node names drawn from 20 ids per graph, edges listed in
random order with a separator, fresh graphs every step. Two trained arms with the same encoder
(2 layers, d=64, 4 heads, neighbour embeddings), batch 64, AdamW lr 3e-3 and 2000 steps
(budget = steps):
  ar   left-to-right next-token prediction on the answer, greedy decoding;
  ilm  insertion LM (joint slot x token softmax, stop head), greedy insertion decoding.
A seed sets the initialisation and the training graphs; the 512 held-out graphs are the same
for every seed. Metrics: exact match of the decoded path (eval/path_exact), the accuracy of
the node after the start (eval/branch_acc; 1/3 = guessing the branch), and for the AR arm the
teacher-forced accuracy on the answer tokens after the branch node (eval/lookup_acc: the edge
lookup that the Clever-Hans rule needs).

Trivial baselines (arms):
  random path (Clever-Hans)  knows every edge, picks a uniformly random child of the start and
                             follows its chain: the 1/degree plateau the claim predicts for AR;
  untrained                  the AR network at initialisation (path exact match, lookup acc).

Checks (declared below, before the run): prerequisites: the AR arm learnt the edge lookup
(lookup acc >= 0.9, and above the untrained network's by 0.5); claims (the verdict rule of
the first run, plus the claim's "AR stays near 1/degree"): ILM's exact match exceeds AR's by
0.30; ILM's exact match is >= 0.60; AR's exact match is within 0.10 above the random-path
(Clever-Hans) baseline. Three seeds, judged on the mean with the spread stated.
"""

from __future__ import annotations

import itertools

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite
from tokenlab.repro.baselines import untrained_metrics

CLAIM = ("On star-graph path finding (degree 3, path length 5) a left-to-right model stays "
         "near 1/degree while an insertion LM finds the path much more often.")

EXPERIMENT = "experiments/insertion_lm.py"
ARMS = (("ar", "left-to-right (AR)"), ("ilm", "insertion LM (ILM)"))
AR, ILM = ARMS[0][1], ARMS[1][1]
RANDOM, UNTRAINED = "random path (Clever-Hans)", "untrained"
BASELINES = (RANDOM, UNTRAINED)
EXACT, BRANCH, LOOKUP = "path exact match", "branch accuracy", "lookup accuracy (AR, teacher-forced)"
METRICS = (("eval/path_exact", EXACT), ("eval/branch_acc", BRANCH),
           ("eval/loss", "eval loss (objective's own)"))
DEGREE = 3
SEEDS = 3

CHECKS = (
    prerequisite("ar_learns_lookup", "the AR arm learnt the edge lookup (the Clever-Hans rule "
                 "needs it; without it nothing is tested)", (AR, LOOKUP), ">=", 0.9),
    prerequisite("ar_lookup_beats_untrained", "the AR arm's lookup accuracy is far above the "
                 "untrained network's", (AR, LOOKUP), ">", (UNTRAINED, LOOKUP), by=0.5),
    claim("ilm_beats_ar", "the insertion LM finds the path far more often than the "
          "left-to-right model", (ILM, EXACT), ">=", (AR, EXACT), by=0.30),
    claim("ilm_finds_path", "the insertion LM finds the path in most held-out graphs",
          (ILM, EXACT), ">=", 0.60),
    claim("ar_near_clever_hans", "the left-to-right model stays near 1/degree: within 0.10 "
          "above the random-path (Clever-Hans) baseline", (AR, EXACT), "<",
          (RANDOM, EXACT), by=-0.10),
)

HISTORY = """\
First design (commit bda46c9; no neighbour embeddings; arms AR, MDM, ILM, 2000 steps, seed 0
only): path exact match AR 0.000, MDM 0.000, ILM 0.000; branch accuracy AR 0.121, MDM 0.107,
ILM 0.002; eval loss AR 1.312, MDM 1.395, ILM 2.708 (did not hold); a 6000-step try reached
0.002. No arm had learnt the edge lookup (AR teacher-forced accuracy ~0.1 after the branch), so
nothing was tested. Probes found no bug; lr 1e-2, 3 layers, d=128, 1 head or batch 256 did not
help within 600 steps, while neighbour embeddings made AR learn the lookup in ~200 steps (and
plateau at 1/degree) and ILM reach ~0.9 in a 2000-step probe.

Second design, before the protocol (commit 1be560d; neighbour embeddings for all arms, the AR
lookup prerequisite; seed 0 only, 456 s): path exact match AR 0.350, MDM 1.000, ILM 0.959;
branch accuracy AR 0.350, MDM 1.000, ILM 0.959; AR lookup accuracy 1.000; verdict held
(rule: ILM >= AR + 0.30 and ILM >= 0.60). The design is changed only after a null result of
the first design (disclosed then).

Under the protocol (this run): the second design's task, model, steps and lr unchanged, three
seeds; the masked-diffusion arm (context only, never in the verdict) is dropped to keep three
seeds of two arms within ~15 minutes on 2 CPU cores; trivial-baseline arms (random path =
the Clever-Hans 1/degree plateau, untrained network) added; the claim's "AR stays near
1/degree" became a claim check."""


def _config(arg: str, overrides=()):
  from tokenlab.config import load_config
  return load_config(f"{EXPERIMENT}:{arg}", list(overrides))


def _eval_batches(config) -> list[dict]:
  from tokenlab.methods.insertion_lm import iterator_fns
  _, eval_fn = iterator_fns(config)
  it = eval_fn(config.train.batch_size, config.seed)
  return list(itertools.islice(it, config.train.eval_batches))


def random_path(rows: np.ndarray, task, rng: np.random.Generator) -> dict[str, float]:
  """The Clever-Hans solver: every edge known, a uniformly random child of the start, then
  the unique child of each node. Exact match and branch accuracy on `rows` (N, seq_len)."""
  P, L = task.prompt_len, task.path_len
  exact, branch = [], []
  for row in rows:
    children = {}
    for u, v, _ in row[:3 * task.num_edges].reshape(-1, 3):
      children.setdefault(int(u), []).append(int(v))
    path = [int(row[P - 3])]
    while len(path) < L:
      options = children.get(path[-1], [])
      if not options:
        break
      path.append(options[int(rng.integers(len(options)))])
    truth = [int(t) for t in row[P:]]
    exact.append(path == truth)
    branch.append(len(path) > 1 and path[1] == truth[1])
  return {"eval/path_exact": float(np.mean(exact)), "eval/branch_acc": float(np.mean(branch))}


def run_seed(ctx: Context) -> Trial:
  from tokenlab.methods.insertion_lm import iterator_fns, task_from_config
  size = "tiny" if ctx.quick else "small"
  quick = ["--config.train.eval_batches=1"] if ctx.quick else []
  rows, res = [], {}
  for arm, label in (ARMS[-1:] if ctx.quick else ARMS):   # quick: the ILM arm only
    spec = f"{EXPERIMENT}:size={size},objective={arm},degree={DEGREE},path=5"
    config = _config(spec.split(":", 1)[1], [f"--config.seed={ctx.seed}", *quick])
    train_fn, eval_fn = iterator_fns(config)   # a finished arm is reused with its metrics
    res[label] = ctx.train(spec, arm, quick, train_iter_fn=train_fn, eval_iter_fn=eval_fn)
  ar_config = _config(f"size={size},objective=ar,degree={DEGREE},path=5",
                      [f"--config.seed={ctx.seed}", *quick])
  batches = _eval_batches(ar_config)
  res[UNTRAINED] = untrained_metrics(ar_config, batches, ctx.seed)
  res[RANDOM] = random_path(np.concatenate([b["inputs"] for b in batches]),
                            task_from_config(ar_config), np.random.default_rng(ctx.seed))
  for name, out in res.items():
    rows += [(name, label, float(out[key])) for key, label in METRICS if key in out]
    if "eval/lookup_acc" in out:
      rows.append((name, LOOKUP, float(out["eval/lookup_acc"])))
  data = {name: {key: float(out[key]) for key, _ in METRICS[:2]} for name, out in res.items()}
  return Trial(rows, data)


def finish(ctx: Context, trials: list[Trial]):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [n for n in (AR, ILM, RANDOM, UNTRAINED) if n in trials[0].data]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for ax, (key, label) in zip(axes, METRICS[:2]):
    for i, n in enumerate(names):
      vals = [t.data[n][key] for t in trials]
      ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.5)
      ax.scatter([i] * len(vals), vals, color=f"C{i}", s=12, zorder=3)
    ax.axhline(1 / DEGREE, color="gray", ls="--", lw=1, label="1/degree")
    ax.set_xticks(range(len(names)), [n.split(" (")[0] if n != RANDOM else "random path"
                                      for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{label} (held-out graphs, {len(trials)} seeds)", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.out("insertion_lm.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = ("Trained arms: same encoder size, batch, optimizer and number of steps (2000) on "
           "fresh random graphs; held-out graphs come from a disjoint stream. Decoding is "
           "greedy for every arm. The baselines are not trained (the untrained network is "
           "the seed's initialisation of the AR model).")
  return [path], notes
