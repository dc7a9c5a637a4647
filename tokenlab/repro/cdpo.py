"""Mini-reproduction of cDPO (Lin et al., "Critical Tokens Matter", arXiv 2411.19943).

Claim: contrastive estimation between a model fine-tuned on correct trajectories and one
fine-tuned on incorrect ones finds the critical tokens of incorrect trajectories better than
the positive model's likelihood alone, and DPO weighted token by token with these scores
(cDPO) improves reasoning accuracy more than plain DPO.

Task (tokenlab.data.chains, `remarks=True`): 4-step arithmetic chains mod 10 whose responses
carry a harmless remark token after every step's result (common M0, or with probability 0.1
one of 7 rare remarks, in correct and incorrect trajectories alike). The remarks are what
make detection non-trivial: without them every correct response token is deterministic, so
the positive model's likelihood alone found every planted mistake (issue 12: detection was
saturated). A rare remark is valid but unlikely; a likelihood-only detector confuses it with
a mistake, a contrastive one should not (positive and negative models agree on remarks).

Per seed (the config seed sets every arm's batches and initialisation):
1. sft: a transformer (d=64, 2 layers) from scratch on the "base model's samples" (`mixed`:
   60% with one planted mistake, mostly the misconception "r + b at the first `*` step"),
   800 steps; positive / negative: sft fine-tuned on correct / incorrect trajectories, 150
   steps each (the real trainer).
2. detection, on 512 held-out incorrect trajectories: s_t = softmax(2 l_pos - l_neg)[y_t];
   top-1 = share whose lowest-s_t response token is the planted mistake (AUROC reported).
   Compared with the positive model alone (s_t = p_pos(y_t)) and the trivial `position
   prior`: the most frequent planted position in 2048 training incorrect trajectories with
   the same operator pattern.
3. preference, from sft (policy and frozen reference both start there), 512 fixed pairs
   (correct chosen, incorrect rejected, same prompt), 100 steps of batch 32, three token
   weightings: `dpo` (all weights 1: plain DPO), `cdpo` (chosen s_t, rejected 1 - s_t) and
   `p_pos-weighted dpo` (the same with s_t = p_pos(y_t): the positive model alone). Each gets
   the same small sweep SWEEP of (peak lr, beta); the setting with the best greedy answer
   accuracy on 512 dev prompts is reported on 1024 other held-out prompts (test). The
   preference steps run in one compiled loop here (the method's CDPO.loss, adam with the
   trainer's clipping and warm-up + cosine schedule), so a sweep costs no recompiles.
Trivial baselines: `majority answer` (always the most frequent final answer of training
problems), `sft (start)` (the preference arms' starting point) and `position prior`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("Contrastive estimation (2 l_pos - l_neg) finds the critical tokens of incorrect "
         "trajectories better than the positive model's likelihood alone, and DPO weighted by "
         "it token by token (cDPO) improves reasoning accuracy more than plain DPO.")

EXPERIMENT = "experiments/cdpo.py"
NUM_DETECT = 512                      # held-out incorrect trajectories scored for detection
EVAL_BATCH, TEST_BATCHES, DEV_BATCHES = 256, 4, 2   # test 1024 prompts, dev 512
PREF_STEPS, PREF_BATCH = 100, 32
SWEEP = ((3e-4, 0.1), (1e-4, 0.1), (1e-4, 0.5))      # (peak lr, beta), the same for every arm
DEV_SEED_OFFSET = 100                 # dev prompts: another data seed than the test prompts
ACC, TOP1 = "held-out answer acc", "top-1 hit rate"
SFT, MAJORITY, PRIOR = "sft (start)", "majority answer", "position prior"
CONTRASTIVE, POSITIVE = "detection: contrastive", "detection: positive only"
WEIGHTINGS = {"dpo": "uniform", "cdpo": "contrastive", "p_pos-weighted dpo": "positive"}

BASELINES = (MAJORITY, SFT, PRIOR)
CHECKS = (
    prerequisite("sft_beats_majority", "the SFT model answers held-out prompts better than "
                 "always giving the most frequent answer", (SFT, ACC), ">", (MAJORITY, ACC)),
    prerequisite("positive_alone_not_saturated", "detection is not saturated: the positive "
                 "model's likelihood alone misses at least 10% of the planted mistakes",
                 (POSITIVE, TOP1), "<", 0.9),
    prerequisite("positive_beats_prior", "the positive model's likelihood finds planted "
                 "mistakes better than the position prior (the models learned the task)",
                 (POSITIVE, TOP1), ">", (PRIOR, TOP1)),
    claim("contrastive_beats_positive", "contrastive scores find the planted mistake more "
          "often than the positive model's likelihood alone", (CONTRASTIVE, TOP1), ">",
          (POSITIVE, TOP1)),
    claim("cdpo_beats_dpo", "tuned cDPO answers held-out prompts better than tuned plain DPO",
          ("cdpo (tuned)", ACC), ">", ("dpo (tuned)", ACC)),
    claim("cdpo_beats_positive_weighting", "tuned cDPO beats DPO weighted by the positive "
          "model alone (tuned)", ("cdpo (tuned)", ACC), ">",
          ("p_pos-weighted dpo (tuned)", ACC)),
    claim("cdpo_beats_sft", "tuned cDPO improves on its SFT start", ("cdpo (tuned)", ACC), ">",
          (SFT, ACC)),
)
SEEDS = 3

HISTORY = """\
Design 1 (before the protocol; `tokenlab repro cdpo --workdir /tmp/repro_cdpo --seed 0`, 590
s): chains without remarks, one sft/positive/negative pipeline, DPO vs cDPO at lr 3e-4, beta
0.1, 150 steps, preference seeds 0 and 1. Detection top-1 1.000, AUROC 1.000 for the
contrastive scores and also for the positive model alone; held-out answer accuracy sft
0.692, DPO 0.409 / 0.420, cDPO 0.999 / 0.999. Verdict then: held. Issue 12: detection was
saturated (the positive model alone found every mistake), DPO fell below its own SFT start
at an untuned lr/beta, and no trivial baseline was reported. Design 2 (this one): remark
tokens make detection non-trivial, a DPO arm weighted by the positive model alone, the same
3-point (lr, beta) sweep for every preference arm chosen on dev prompts, majority-answer and
position-prior baselines, 3 seeds of the whole pipeline, 100 preference steps."""


def _train(ctx: Context, arm: str, arg: str, overrides: list[str]):
  # The trainer feeds config.data.name="method" from this method's iterator_fns; the arms are
  # evaluated here, so the trainer's own eval (a generation compile per arm) is skipped.
  return ctx.train(f"{EXPERIMENT}:{arg}", arm, overrides,
                   eval_iter_fn=lambda batch_size, seed: iter(()))


def _lm(size: str):
  from tokenlab.config import load_config
  from tokenlab.method import dataclass_from_config
  from tokenlab.methods.cdpo import CDPO, CDPOConfig, task_from_config
  config = load_config(f"{EXPERIMENT}:size={size}")
  return (CDPO(dataclass_from_config(CDPOConfig, config.model, prefix="model")),
          task_from_config(config), config)


def _params(ctx: Context, arm: str):
  from tokenlab.train.init_from import load_params
  params = load_params(ctx.path(arm))
  return params.get("policy", params)


def _detection_batch(task, data_seed: int, n: int) -> dict:
  from tokenlab.data.chains import ChainIterator
  return next(ChainIterator(task, n, 0, kind="incorrect", split="validation",
                            data_seed=data_seed + 1))


def detection(lm, task, data_seed: int, pos, neg, n: int) -> dict[str, dict[str, float]]:
  """Detection metrics of the planted mistakes for contrastive scores and p_pos alone."""
  from tokenlab.methods.cdpo import criticality_scores, detection_metrics
  batch = _detection_batch(task, data_seed, n)
  out = {}
  for name, (a, b) in {CONTRASTIVE: (pos, neg), POSITIVE: (pos, pos)}.items():
    s = criticality_scores(lm, a, b, batch["inputs"], batch["targets"])
    out[name] = detection_metrics(s, batch["loss_mask"], batch["critical"])
  return out


def _op_pattern(inputs: np.ndarray, num_steps: int) -> tuple:
  return tuple(int(inputs[2 + 3 * i]) for i in range(num_steps))


def position_prior_top1(task, data_seed: int, n: int, train_rows: int = 2048) -> float:
  """Top-1 of always naming, for a prompt's operator pattern, the most frequent planted
  position among `train_rows` training incorrect trajectories (an answer prior)."""
  from tokenlab.data.chains import ChainIterator
  from tokenlab.repro.baselines import answer_prior_accuracy
  train = next(ChainIterator(task, train_rows, 0, kind="incorrect", split="train",
                             data_seed=data_seed))
  test = _detection_batch(task, data_seed, n)
  pairs = lambda b: [(_op_pattern(x, task.num_steps), int(c))
                     for x, c in zip(b["inputs"], b["critical"])]
  return answer_prior_accuracy(pairs(train), pairs(test))


def majority_answer_acc(task, data_seed: int, test_answers: np.ndarray,
                        train_rows: int = 4096) -> float:
  """Accuracy of always answering the most frequent final answer of training problems."""
  from tokenlab.data.chains import ChainIterator
  from tokenlab.repro.baselines import majority
  train = next(ChainIterator(task, train_rows, 0, kind="correct", split="train",
                             data_seed=data_seed))
  best = majority(int(a) for a in train["answer"])
  return float(np.mean(test_answers == best))


def held_out_evaluator(lm, task, data_seed: int, batch_size: int, batches: int):
  """params -> {answer_acc: greedy final-answer accuracy, token_acc: teacher-forced
  response-token accuracy} on the same held-out prompts for every call (one compile);
  `.answers` holds the correct answers of those prompts."""
  import jax
  from tokenlab.data.chains import ChainIterator
  from tokenlab.methods.transformer_lm import lm_loss
  data = list(ChainIterator(task, batch_size, 0, kind="correct", split="validation",
                            data_seed=data_seed, num_batches=batches))

  @jax.jit
  def metrics(p, batch):
    acc = lm.answer_accuracy(p, batch["inputs"], batch)
    _, m = lm_loss(lm.lm_logits(p, batch["inputs"]), batch)
    return acc.value(), m["accuracy"].value()

  def evaluate(params) -> dict[str, float]:
    res = [metrics(params, b) for b in data]
    return {"answer_acc": float(np.mean([r[0] for r in res])),
            "token_acc": float(np.mean([r[1] for r in res]))}
  evaluate.answers = np.concatenate([b["answer"] for b in data])
  return evaluate


class PreferenceLoop:
  """Token-weighted DPO from a starting LM, in one compiled step per beta: the method's
  CDPO.loss (weighting='critical'; plain DPO = chosen scores 1, rejected scores 0, i.e. all
  weights 1), the reference frozen, adam (b1 0.9, b2 0.95) after global-norm clipping at 1.0,
  linear warm-up over 5% of the steps then cosine decay to 0.1 x the peak lr (the trainer's
  preference settings: experiments/cdpo.py, weight decay 0)."""

  def __init__(self, lm_config):
    self.lm_config, self._steps = lm_config, {}

  def _step(self, beta: float):
    if beta not in self._steps:
      import jax
      import optax
      from tokenlab.methods.cdpo import CDPO
      method = CDPO(dataclasses.replace(self.lm_config, stage="preference",
                                        weighting="critical", beta=beta))
      tx = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(0.9, 0.95, 1e-8))

      @jax.jit
      def step(policy, opt_state, ref, batch, lr):
        loss_fn = lambda p: method.loss({"policy": p, "reference": ref}, batch,
                                        jax.random.key(0))
        (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(policy)
        updates, opt_state = tx.update(grads, opt_state, policy)
        policy = jax.tree.map(lambda p, u: p - lr * u, policy, updates)
        return policy, opt_state, loss, m["reward_acc"].value()
      self._steps[beta] = (step, tx)
    return self._steps[beta]

  def train(self, start, pairs: list[dict], lr: float, beta: float, steps: int,
            batch_size: int, seed: int):
    """The policy after `steps` steps from `start` on `pairs` (batches in seed's order)."""
    import jax.numpy as jnp
    from ml_collections import ConfigDict
    from tokenlab.data.preference import PairIterator
    from tokenlab.train.optimizer import make_schedule
    step, tx = self._step(beta)
    schedule = make_schedule(ConfigDict(dict(lr=lr, warmup_steps=max(int(steps * 0.05), 1),
                                             schedule="cosine", min_lr_ratio=0.1)), steps)
    policy, ref = start, start
    opt_state = tx.init(policy)
    it = PairIterator(pairs, batch_size, seed)
    losses = []
    for i in range(steps):
      policy, opt_state, loss, _ = step(policy, opt_state, ref, next(it),
                                        jnp.float32(schedule(i)))
      losses.append(float(loss))
    return policy, losses


def _weighted_pairs(pairs: list[dict], lm, pos, neg, weighting: str) -> list[dict]:
  from tokenlab.methods.cdpo import add_scores
  if weighting == "contrastive":
    return add_scores(pairs, lm, pos, neg, 1.0)
  if weighting == "positive":
    return add_scores(pairs, lm, pos, pos, 1.0)     # s_t = p_pos(y_t)
  out = [dict(p) for p in pairs]                   # plain DPO: every weight 1
  for p in out:
    p["chosen_scores"] = np.ones(p["chosen_targets"].shape, np.float32)
    p["rejected_scores"] = np.zeros(p["rejected_targets"].shape, np.float32)
  return out


def run_seed(ctx: Context) -> Trial:
  from tokenlab.methods.cdpo import preference_pairs
  size = "tiny" if ctx.quick else "small"
  quick = (["--config.train.steps=2", "--config.train.eval_batches=1"] if ctx.quick else [])
  lm, task, config = _lm(size)
  data_seed = config.task.data_seed
  sft_dir = os.path.abspath(ctx.path("sft"))
  _train(ctx, "sft", f"size={size},stage=sft,kind=mixed", quick)
  if ctx.quick:    # smoke test: the positive and negative models are sft itself
    pos = neg = _params(ctx, "sft")
  else:
    for arm, kind in (("positive", "correct"), ("negative", "incorrect")):
      _train(ctx, arm, f"size={size},stage=sft,kind={kind},init_from={sft_dir}", quick)
    pos, neg = _params(ctx, "positive"), _params(ctx, "negative")
  n_detect = 16 if ctx.quick else NUM_DETECT
  det = detection(lm, task, data_seed, pos, neg, n_detect)
  rows = [(name, metric, d[key]) for name, d in det.items()
          for metric, key in ((TOP1, "top1"), ("AUROC", "auroc"))]
  rows.append((PRIOR, TOP1, position_prior_top1(task, data_seed, n_detect,
                                                 64 if ctx.quick else 2048)))

  eval_batch = 8 if ctx.quick else EVAL_BATCH
  test = held_out_evaluator(lm, task, data_seed, eval_batch, 1 if ctx.quick else TEST_BATCHES)
  dev = held_out_evaluator(lm, task, data_seed + DEV_SEED_OFFSET, eval_batch,
                           1 if ctx.quick else DEV_BATCHES)
  start = _params(ctx, "sft")
  sft_acc = test(start)
  rows += [(SFT, ACC, sft_acc["answer_acc"]), (SFT, "held-out token acc", sft_acc["token_acc"]),
           (MAJORITY, ACC, majority_answer_acc(task, data_seed, test.answers))]

  pairs = preference_pairs(task, int(config.task.num_pairs), data_seed, "train")
  loop = PreferenceLoop(lm.config)
  steps = 2 if ctx.quick else PREF_STEPS
  batch = min(PREF_BATCH, len(pairs))
  sweep = SWEEP[:1] if ctx.quick else SWEEP
  curves = {}
  for arm, weighting in WEIGHTINGS.items():
    weighted = _weighted_pairs(pairs, lm, pos, neg, weighting)
    best = None
    for lr, beta in sweep:
      print(f"[{ctx.name}] seed {ctx.seed}: preference '{arm}' lr {lr:g} beta {beta:g} "
            f"({steps} steps) ...", flush=True)
      policy, losses = loop.train(start, weighted, lr, beta, steps, batch, ctx.seed)
      d, t = dev(policy), test(policy)
      tag = f"{arm} (lr {lr:g}, beta {beta:g})"
      rows += [(tag, "dev answer acc", d["answer_acc"]), (tag, ACC, t["answer_acc"]),
               (tag, "held-out token acc", t["token_acc"])]
      curves[tag] = losses
      if best is None or d["answer_acc"] > best[0]:
        best = (d["answer_acc"], t, lr, beta)
    rows += [(f"{arm} (tuned)", ACC, best[1]["answer_acc"]),
             (f"{arm} (tuned)", "held-out token acc", best[1]["token_acc"]),
             (f"{arm} (tuned)", "chosen lr", best[2]), (f"{arm} (tuned)", "chosen beta", best[3])]
  return Trial(rows, {"curves": curves})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from tokenlab.repro.protocol import seed_values
  values = [seed_values(t.rows) for t in trials]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
  det = [CONTRASTIVE, POSITIVE, PRIOR]
  for j, name in enumerate(det):
    vals = [v[(name, TOP1)] for v in values if (name, TOP1) in v]
    ax1.bar(j, np.mean(vals), color=f"C{j}", alpha=0.5)
    ax1.scatter([j] * len(vals), vals, color=f"C{j}", s=12)
  ax1.set_xticks(range(len(det)), ["contrastive", "positive only", "position prior"],
                 fontsize=8)
  ax1.set_ylim(0, 1.05)
  ax1.set_title("planted-mistake detection: top-1 hit rate (dots: seeds)", fontsize=9)
  arms = [MAJORITY, SFT] + [f"{a} (tuned)" for a in WEIGHTINGS]
  for j, name in enumerate(arms):
    vals = [v[(name, ACC)] for v in values if (name, ACC) in v]
    ax2.bar(j, np.mean(vals), color=f"C{j + 3}", alpha=0.5)
    ax2.scatter([j] * len(vals), vals, color=f"C{j + 3}", s=12)
  ax2.set_xticks(range(len(arms)), ["majority", "sft", "DPO", "cDPO", "p_pos-DPO"],
                 fontsize=8)
  ax2.set_ylim(0, 1.05)
  ax2.set_title("held-out greedy answer accuracy (tuned on dev prompts)", fontsize=9)
  fig.tight_layout()
  path = ctx.out("cdpo.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = ("All preference arms start from the same sft parameters of their seed, use the "
           "same 512 pairs, steps, batches and (lr, beta) sweep " + ", ".join(
               f"({lr:g}, {b:g})" for lr, b in SWEEP) + ", and differ only in the token "
           "weights; each arm's reported setting is the one with the best dev-prompt answer "
           "accuracy. The planted mistakes stand in for a base model's habits: the main one "
           "is a misconception at a chain's first `*` step, which sft makes greedily. "
           "Remarks: M0 with probability 0.9, else one of M1..M7.")
  return [path], notes
