"""Mini-reproduction of "Fourier Head" (Gillman et al., arXiv 2410.22269), under the protocol.

The paper's toy experiment: learn input-dependent continuous distributions, quantised into
bins, from a finite sample; a linear head is compared with Fourier heads of several
frequencies. Fourier heads reach a lower KL to the true law and a smoother predicted pmf; the
number of frequencies trades expressivity for smoothness.

Here (second design, see HISTORY): the conditional law of the bin Markov chain of
tokenlab.methods.fourier_head (64 bins of [-1, 1]; next-bin law a two-Gaussian mixture, sigma
0.1, whose means/weights move with the current bin) learned from a fixed training set of
M = 4096 (current bin, next bin) pairs, the current bin uniform (64 pairs per conditioning bin
on average, as in the paper's finite toy datasets). Every example is one pair (sequence length
1), so the network sees only the current bin and cannot memorise sequences: the best it can
do with the data is the conditional law. The same 2-layer d=64 transformer with four heads:
linear, and Fourier with N = 4, 12, 32 frequencies (gamma = 1e-6, the paper's default); all
arms the same steps and batch (budget = steps).

Trivial baselines (arms): the uniform law over the 64 bins, and the count bigram fitted on the
same 4096 training pairs (tokenlab.repro.baselines.NGram, add-alpha interpolated with the
unigram; alpha chosen by 2-fold cross-validation on the training pairs from a small grid: the
baseline's own tuning, with training data only).

Metrics, exact (no sampling noise): for every conditioning bin x the arm's predicted pmf
q(.|x) is compared with the true law; averaged over uniform x: KL(truth || q) in nats,
expected NLL, and roughness of q (mean L2 distance to its Gaussian-blurred copies; lower =
smoother), next to the truth's roughness.
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("Replacing a linear head over bins with a Fourier head gives predicted "
         "distributions closer to a smooth continuous target (lower KL) and smoother, with "
         "the number of frequencies trading expressivity for smoothness.")

EXPERIMENT = "experiments/fourier_head.py"
ARMS = (("linear", "head=linear"), ("fourier_N4", "head=fourier,freqs=4"),
        ("fourier_N12", "head=fourier,freqs=12"), ("fourier_N32", "head=fourier,freqs=32"))
NUM_TRAIN = 4096          # training pairs (fixed set, drawn with the task's data seed)
BATCH = 128
STEPS = 600
ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0)

KL, ROUGH, NLL = "KL(truth||model) nats", "roughness (lower = smoother)", "expected NLL nats"
UNIFORM, COUNTS = "uniform", "bigram (counts)"
BASELINES = (UNIFORM, COUNTS)

CHECKS = (
    prerequisite("linear_beats_uniform", "the linear head learned the conditional law: its "
                 "KL to the truth is below the uniform law's", ("linear", KL), "<",
                 (UNIFORM, KL)),
    prerequisite("fourier_beats_uniform", "the best Fourier head learned the conditional law: "
                 "its KL is below the uniform law's", ("best fourier", KL), "<", (UNIFORM, KL)),
    prerequisite("network_reaches_counts", "the best trained network is at least as close to "
                 "the truth as counting the same training pairs (so the comparison is between "
                 "learners, not degrees of overfitting)", ("best network", KL), "<",
                 (COUNTS, KL)),
    claim("fourier_lower_kl", "the best Fourier head is closer to the true law than the "
          "linear head", ("best fourier", KL), "<", ("linear", KL)),
    claim("fourier_smoother", "every Fourier head with N <= 12 predicts a smoother pmf than "
          "the linear head", ("fourier N<=12 (roughest)", ROUGH), "<", ("linear", ROUGH)),
    claim("frequencies_trade_smoothness", "fewer frequencies give a smoother pmf (N = 4 "
          "smoother than N = 32)", ("fourier_N4", ROUGH), "<", ("fourier_N32", ROUGH)),
)
SEEDS = 3

HISTORY = """\
First design (before the protocol; one seed, `tokenlab repro fourier_head --seed 0`, 436 s):
sequences of 32 bins from a fixed set of 128 training sequences (~64 samples per conditioning
bin), 400 steps of batch 32 x 32 tokens, 2-layer d=64 transformer, KL/NLL on fresh sequences.
KL (nats): linear 5.02, Fourier N4 1.05, N12 1.29, N32 1.53; eval NLL 8.21 / 4.26 / 4.49 /
4.71 against train NLL 0.04 / 2.57 / 1.64 / 0.80; roughness linear 0.586, N4 0.025,
N12 0.095 (truth 0.040). Verdict then: "held". Under review (issue 12) it could not test the
claim: every arm was worse than the uniform law (KL(truth || uniform) = 0.95 nats, NLL
ln 64 = 4.16), and a count bigram on the same data reached about 0.30 nats: with whole
sequences in context the transformer memorised the 128 training sequences, so the run compared
degrees of overfitting. Changed: one (current, next) pair per example (no sequence to
memorise), 4096 training pairs, exact metrics over all conditioning bins, uniform and count
bigram arms, 3 seeds, checks declared as data."""


def _pmfs(workdir: str, bins: int) -> np.ndarray:
  """(bins, bins): the trained arm's predicted next-bin pmf for every current bin."""
  import jax
  from tokenlab.train.inference import load_trained
  example = {"inputs": np.zeros((bins, 1), np.int32)}
  run = load_trained(workdir, example)
  tokens = np.arange(bins, dtype=np.int32)[:, None]
  logits = jax.jit(run.method.logits)(run.params, {"inputs": tokens})
  return np.asarray(jax.nn.softmax(np.asarray(logits, np.float64)[:, 0], -1))


def scores(q: np.ndarray, trans: np.ndarray) -> dict[str, float]:
  """Exact metrics of predicted pmfs q (x, y) against the true law trans (x, y), x uniform."""
  import jax.numpy as jnp
  from tokenlab.methods.fourier_head import roughness
  q = np.clip(np.asarray(q, np.float64), 1e-30, None)
  t = np.asarray(trans, np.float64)
  ce = -np.sum(t * np.log(q), axis=1)
  h = -np.sum(np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0), axis=1)
  return {KL: float(np.mean(ce - h)), NLL: float(np.mean(ce)),
          ROUGH: float(np.mean(np.asarray(roughness(jnp.asarray(q, jnp.float32)))))}


def count_pmfs(pairs: np.ndarray, bins: int, alpha: float) -> np.ndarray:
  """(bins, bins): the count bigram's p(y | x) fitted on (x, y) pairs."""
  from tokenlab.repro.baselines import NGram
  m = NGram(order=2, vocab=bins, alpha=alpha).fit(pairs)
  return np.array([[m.prob([x], y) for y in range(bins)] for x in range(bins)])


def tune_alpha(pairs: np.ndarray, bins: int, alphas=ALPHAS) -> float:
  """The add-alpha weight with the lowest 2-fold cross-validated NLL on the training pairs."""
  half = len(pairs) // 2
  folds = ((pairs[:half], pairs[half:]), (pairs[half:], pairs[:half]))
  def cv(alpha):
    out = 0.0
    for fit, held in folds:
      q = count_pmfs(fit, bins, alpha)
      out += -np.mean(np.log(q[held[:, 0], held[:, 1]]))
    return out
  return min(alphas, key=cv)


def run_seed(ctx: Context) -> Trial:
  from tokenlab.config import load_config
  from tokenlab.methods.fourier_head import BinMarkovIterator, iterator_fns, transition_matrix

  size = "tiny" if ctx.quick else "small"
  steps = ctx.steps(STEPS, 2)
  common = [f"--config.train.steps={steps}", f"--config.train.batch_size={BATCH}",
            "--config.task.seq_len=1", "--config.data.seq_len=1",
            f"--config.task.num_train={NUM_TRAIN}",
            f"--config.task.data_seed={1234 + ctx.seed}"]
  arms = ARMS[1:2] if ctx.quick else ARMS   # quick: one Fourier arm (smoke test)
  rows, pmfs = [], {}
  config = None
  for arm, arg in arms:
    spec = f"{EXPERIMENT}:size={size},{arg}"
    config = load_config(spec, [f"--config.seed={ctx.seed}", *common])
    train_fn, _ = iterator_fns(config)
    no_eval = lambda batch_size, seed: iter(())   # exact metrics below replace the eval
    ctx.train(spec, arm, common, train_iter_fn=train_fn, eval_iter_fn=no_eval)
    pmfs[arm] = _pmfs(ctx.path(arm), config.task.num_bins)

  bins = config.task.num_bins
  trans = transition_matrix(bins, config.task.sigma)
  data = BinMarkovIterator(config.task, 1, ctx.seed).data        # the fixed training pairs
  alpha = tune_alpha(data, bins)
  pmfs[UNIFORM] = np.full((bins, bins), 1.0 / bins)
  pmfs[COUNTS] = count_pmfs(data, bins, alpha)
  res = {arm: scores(q, trans) for arm, q in pmfs.items()}
  for arm, s in res.items():
    rows += [(arm, k, v) for k, v in s.items()]
  rows.append((COUNTS, "alpha (2-fold CV on training pairs)", alpha))
  rows.append(("truth", ROUGH, scores(trans, trans)[ROUGH]))
  fourier = [a for a in res if a.startswith("fourier")]
  best = min(fourier, key=lambda a: res[a][KL])
  rows.append(("best fourier", KL, res[best][KL]))
  rows.append(("best network", KL, min(res[a][KL] for a in res if a in dict(ARMS))))
  smooth = [a for a in fourier if int(a.split("N")[1]) <= 12]
  rows.append(("fourier N<=12 (roughest)", ROUGH, max(res[a][ROUGH] for a in smooth)))
  return Trial(rows, {"pmfs": pmfs, "trans": trans, "res": res})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Predicted pmfs (seed 0) for three conditioning bins, and KL / roughness per arm over
  seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  first = trials[0].data
  trans, pmfs = first["trans"], first["pmfs"]
  bins = trans.shape[0]
  conds = [bins // 8, bins // 2, 7 * bins // 8]
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
  for ax, c in zip(axes[:3], conds):
    for arm, q in pmfs.items():
      if arm != UNIFORM:
        ax.plot(q[c], label=arm, lw=1)
    ax.plot(trans[c], "k--", label="truth", lw=1.5)
    ax.set_title(f"next-bin law given bin {c} (seed {ctx.seed})", fontsize=9)
  axes[0].legend(fontsize=7)
  arms = list(first["res"])
  ax = axes[3]
  for arm in arms:
    kl = [t.data["res"][arm][KL] for t in trials]
    rough = [t.data["res"][arm][ROUGH] for t in trials]
    ax.errorbar(np.mean(rough), np.mean(kl), xerr=np.std(rough), yerr=np.std(kl), fmt="o",
                label=arm)
  ax.set_xlabel("roughness (lower = smoother)")
  ax.set_ylabel("KL(truth || model), nats")
  ax.set_title(f"mean +- std over {len(trials)} seeds", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.out("fourier_head.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = (f"Each network arm: {ctx.steps(STEPS, 2)} steps of batch {BATCH} pairs (same "
           f"budget for all heads) drawn from the fixed set of {NUM_TRAIN} training pairs "
           "(a different set per seed); metrics exact over all 64 conditioning bins. The "
           "regulariser weight is the paper's 1e-6. The count bigram is the add-alpha "
           "estimate from the same pairs.")
  return [path], notes
