"""Mini-reproduction of training on self-generated tokens (Cen et al., TMLR 2025,
arXiv 2410.14655), under the reproduction protocol (tokenlab/repro/protocol.py).

Claim: feeding the model its own tokens during training, by batch-scheduled sampling (BASH)
or reference-answer-based correction (RAC), narrows the training-inference gap and improves
free-running generation over teacher forcing.

Setup (tokenlab.data.arithmetic; tokenlab.methods.self_generated_tokens):
- task: addition of integers of 1..8 digits, digits least-significant first, zero-padded to a
  fixed width (prompt 19 tokens, answer 9 digits + <eos>); a fixed training set of 1000
  problems (the fine-tuning data), the loss on the answer only.
- model: a 2-layer d=64 transformer LM trained from scratch, 600 steps x 64 problems, lr 2e-3;
  three arms differing only in the training inputs: teacher forcing; BASH (each answer input
  replaced by the model's own token, sampled at temperature 1 from a no-gradient
  teacher-forced pass, with probability p rising linearly from 0 to 0.5 over training); RAC (a
  row takes, with the same p, the first k tokens of the model's own free-running answer
  (temperature 1) as input, k uniform in 1..answer length, all targets the reference).
  A seed sets the initialisation and the order of the batches. Same budget for every arm:
  600 steps of 64 problems (BASH and RAC spend extra forward passes on their own tokens).
- metric: free-running greedy exact match of the whole answer on 256 held-out problems of
  the training distribution and on 256 hard ones (both operands 8 digits, digit pairs biased
  to carry: long carry chains). Also reported, not judged: free-running answer-token accuracy,
  the accuracy of the tokens after a row's first error (error accumulation), and the
  teacher-forced answer NLL.

Trivial baselines (arms; none is trained by gradient):
- answer prior: always the most frequent answer of the 1000 training problems;
- count 4-gram: an n-gram counted on the training problems (tokenlab.repro.baselines.NGram),
  decoding the answer greedily from the prompt;
- no-carry adder: the digit-wise sum mod 10 (right whenever no carry occurs): the shortcut a
  model shows when it has not learnt carries;
- untrained: the same network at initialisation, decoded the same way.

Checks (declared below, before the run): prerequisites: teacher forcing beats every trivial
baseline on held-out exact match (by 0.3), and it is not saturated on the hard set
(< 0.95); claims: BASH and RAC each beat teacher forcing by more than 0.01 on each set, judged
on the seed mean with the spread stated.
"""

from __future__ import annotations

import itertools

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite
from tokenlab.repro.baselines import untrained_metrics

CLAIM = ("Training on the model's own tokens (batch-scheduled sampling, BASH, and "
         "reference-answer-based correction, RAC) improves free-running generation over "
         "teacher forcing.")

EXPERIMENT = "experiments/self_generated_tokens.py"
ARMS = (("teacher_forcing", "teacher forcing"), ("bash", "BASH"), ("rac", "RAC"))
SETS = (("eval/exact_match", "exact match (held-out)"),
        ("eval/exact_match_hard", "exact match (hard)"))
EXTRA = (("eval/free_token_acc", "free-running token acc"),
         ("eval/recovery_acc", "token acc after first error"),
         ("eval/loss", "teacher-forced answer NLL nats"))
PRIOR, NGRAM, NOCARRY, UNTRAINED = "answer prior", "count 4-gram", "no-carry adder", "untrained"
BASELINES = (PRIOR, NGRAM, NOCARRY, UNTRAINED)
NGRAM_ORDER = 4
SEEDS = 3
MARGIN = 0.01       # a method "beats" teacher forcing by more than this (unchanged)
HELD_OUT, HARD = SETS[0][1], SETS[1][1]
TF = "teacher forcing"

CHECKS = tuple(
    [prerequisite(f"tf_beats_{b.replace(' ', '_').replace('-', '_')}",
                  f"teacher forcing learns addition beyond the {b} baseline",
                  (TF, HELD_OUT), ">", (b, HELD_OUT), by=0.3) for b in BASELINES]
    + [prerequisite("hard_not_saturated", "teacher forcing is not saturated on the hard set",
                    (TF, HARD), "<", 0.95)]
    + [claim(f"{arm}_beats_tf_{tag}", f"{name} beats teacher forcing on {label}",
             (name, label), ">", (TF, label), by=MARGIN)
       for arm, name in ARMS[1:] for tag, label in (("heldout", HELD_OUT), ("hard", HARD))])

HISTORY = """\
Before the protocol (commit 8caf76e and earlier; `tokenlab repro self_generated_tokens --seed 0`,
904 s, same task, model, arms and seeds 0, 1, 2, no baseline arms): exact match (held-out)
TF 0.904 +- 0.069, BASH 0.891 +- 0.066, RAC 0.900 +- 0.029; exact match (hard) TF 0.553 +-
0.255, BASH 0.396 +- 0.112, RAC 0.400 +- 0.188 (std with ddof 0). Rule then: a method beats TF
on a set when its seed mean is higher by > 0.01 and it is higher in >= 2 of 3 seeds; verdict
did not hold (neither method beat TF on either set). Under the protocol the same claims are
judged on the seed mean (by > 0.01) with the spread stated; trivial-baseline arms and a
non-saturation prerequisite were added; nothing else changed."""


def _config(arg: str, overrides=()):
  from tokenlab.config import load_config
  return load_config(f"{EXPERIMENT}:{arg}", list(overrides))


def _eval_batches(config) -> list[dict]:
  from tokenlab.methods.self_generated_tokens import iterator_fns
  _, eval_fn = iterator_fns(config)
  it = eval_fn(config.train.batch_size, config.seed)
  return list(itertools.islice(it, config.train.eval_batches))


def _exact(pred: np.ndarray, batches: list[dict], prompt_len: int) -> dict[str, float]:
  """Exact match of predicted answers (rows in batch order) on the held-out / hard rows."""
  answers = np.concatenate([b["targets"][:, prompt_len - 1:] for b in batches])
  hard = np.concatenate([b["hard"] for b in batches]) > 0
  ok = np.all(pred == answers, 1)
  return {SETS[0][0]: float(ok[~hard].mean()), SETS[1][0]: float(ok[hard].mean())}


def trivial_baselines(config, batches: list[dict]) -> dict[str, dict[str, float]]:
  """Exact match of the training-free baselines on the eval batches."""
  from tokenlab.methods.self_generated_tokens import AdditionIterator, task_from_config
  from tokenlab.repro.baselines import NGram, majority
  task, t = task_from_config(config), config.task
  train = AdditionIterator(task, 1, 0, split="train", num_train=t.num_train,
                           data_seed=t.data_seed).fixed
  P, A = task.prompt_len, task.answer_len
  prompts = np.concatenate([b["inputs"][:, :P] for b in batches])
  n = len(prompts)
  out = {}
  prior = np.array(majority(tuple(r[P:]) for r in train))
  out[PRIOR] = _exact(np.tile(prior, (n, 1)), batches, P)
  ngram = NGram(NGRAM_ORDER, config.model.vocab_size).fit(train)
  pred = np.zeros((n, A), np.int64)
  for i, prompt in enumerate(prompts):
    seq = [int(x) for x in prompt]
    for j in range(A):
      y = max(range(config.model.vocab_size), key=lambda v: ngram.prob(seq, v))
      seq.append(y)
      pred[i, j] = y
  out[NGRAM] = _exact(pred, batches, P)
  w = task.num_digits
  a, b = prompts[:, 1:1 + w], prompts[:, 2 + w:2 + 2 * w]   # digits (task order)
  assert task.reverse, "the no-carry adder reads least-significant-first digits"
  digits = np.concatenate([(a + b) % 10, np.zeros((n, 1), np.int64)], 1)
  from tokenlab.data.arithmetic import EOS
  out[NOCARRY] = _exact(np.concatenate([digits, np.full((n, 1), EOS)], 1), batches, P)
  return out


def run_seed(ctx: Context) -> Trial:
  size = "tiny" if ctx.quick else "small"
  quick = ["--config.train.eval_batches=1"] if ctx.quick else []
  arms = ARMS[-1:] if ctx.quick else ARMS    # quick: the RAC arm (the costliest) only
  res, rows = {}, []
  for arm, name in arms:
    out = ctx.train(f"{EXPERIMENT}:size={size},mode={arm}", arm, quick)
    res[name] = out
    rows += [(name, label, float(out[key])) for key, label in SETS + EXTRA]
  config = _config(f"size={size}", [f"--config.seed={ctx.seed}", *quick])
  batches = _eval_batches(config)
  base = trivial_baselines(config, batches)
  base[UNTRAINED] = untrained_metrics(config, batches, ctx.seed)
  for name, out in base.items():
    res[name] = out
    rows += [(name, label, float(out[key])) for key, label in SETS]
  return Trial(rows, {name: {key: float(v[key]) for key, _ in SETS + EXTRA if key in v}
                      for name, v in res.items()})


def finish(ctx: Context, trials: list[Trial]):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [n for n in [name for _, name in ARMS] + list(BASELINES) if n in trials[0].data]
  panels = SETS + EXTRA[:2]
  fig, axes = plt.subplots(1, len(panels), figsize=(15, 3.4))
  for ax, (key, label) in zip(axes, panels):
    shown = [n for n in names if key in trials[0].data[n]]
    for i, n in enumerate(shown):
      vals = [t.data[n][key] for t in trials]
      ax.scatter([i] * len(vals), vals, color=f"C{i}", zorder=3, s=12)
      ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.4)
    ax.set_xticks(range(len(shown)), shown, rotation=35, ha="right", fontsize=7)
    ax.set_title(label, fontsize=9)
  fig.suptitle(f"8-digit addition, free-running greedy decoding ({len(trials)} seeds; bars "
               "= mean, dots = seeds)", fontsize=10)
  fig.tight_layout()
  path = ctx.out("self_generated_tokens.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = ("All arms train the same model on the same 1000 problems for the same 600 steps "
           "(budget = steps); BASH adds one no-gradient forward pass per step, RAC a "
           "free-running decode of the answer. With greedy decoding, free-running exact "
           "match equals teacher-forced exact match (all argmaxes right on the reference "
           "path), so exposure bias shows in the token accuracies after a first error, "
           "reported alongside. The baselines need no training (the untrained network is "
           "the seed's initialisation).")
  return [path], notes
