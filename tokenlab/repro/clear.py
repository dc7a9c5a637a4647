"""Mini-reproduction of CLEAR (Liu et al., arXiv 2412.16112) under the protocol.

Claim of the paper in miniature: a pre-trained diffusion transformer whose image tokens are
restricted to a circular local window (radius r) and fine-tuned briefly (attention layers
only) with CLEAR's distillation losses generates about as well as its dense-attention
teacher; the distillation terms beat fine-tuning with the flow-matching loss alone, and a
larger window does better than a smaller one.

Setup (experiments/clear.py, size=small, 8 x 8 digits, 1,617 training images, one pixel per
token: an 8 x 8 token grid; a 3-layer d = 32 class-conditional flow DiT):
  teacher          dense attention, trained from scratch (experiments/clear.py stage=teacher,
                   2,000 steps), ONCE, with seed 0, and shared by all seeds: the paper starts
                   from one pre-trained model, so the seeds vary what CLEAR does (the
                   students' fine-tuning and the sampling noise), not the teacher;
and per seed:
  CLEAR r=R        circular local attention of radius R (r = 2: at most 9 of 64 keys, r = 3:
                   at most 25), started from the teacher, only q/k/v/out trained, with
                   L = L_fm + 0.5 MSE(prediction, teacher) + 0.5 MSE(attention outputs);
  FM only r=R      the same student, steps, batch and trained parameters, with L_fm alone;
  local r=R, no fine-tuning   the teacher's weights run with local attention (what the
                   fine-tuning starts from).
Budget = steps: every student the same steps, batch and learning rate.
500 samples per arm (50 per class, 20 Euler steps, no guidance, the same noise in every arm)
are scored by the shared digits classifier (tokenlab.evals.image_samples): class accuracy and
FD-classifier (a toy FID on its 64 features) against the 180 validation images, read against
the real-images row (500 real training images against the same reference). Also measured on
the validation images with fixed noise and times: the flow-matching MSE, and the student's
velocity MSE to the teacher's (how closely the student reproduces its teacher).

Trivial baselines (arms): the untrained network (adaLN-Zero: its velocity is 0, so its samples
are the clipped noise), a per-class count model (each pixel drawn independently from the
values of that pixel among the class's training images), and the uniform answer prior for
class accuracy (0.1, ten classes).
"""

from __future__ import annotations

import os

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite
from tokenlab.repro.sampling import per_class_samples, save_per_class_grid

CLAIM = ("A diffusion transformer restricted to circular local attention (radius r) and "
         "fine-tuned briefly from its dense-attention teacher with CLEAR's distillation "
         "losses generates about as well as the teacher, better than the same fine-tuning "
         "without distillation, and better with a larger r.")

EXPERIMENT = "experiments/clear.py"
NUM_SAMPLES = 500            # generated images per arm (50 per class)
RADII = (2, 3)
SEEDS = 3

ACC, FD = "class accuracy", "FD-classifier"
FM, TO_TEACHER = "val flow-matching MSE", "val velocity MSE to teacher"
KEYS = "attended keys per query (mean)"
TEACHER = "teacher (dense)"
UNTRAINED, COUNT, PRIOR, REAL = ("untrained DiT", "per-class pixel counts", "uniform prior",
                                 "real training images")


def clear_arm(r: int) -> str:
  return f"CLEAR r={r} (distilled)"


def fm_arm(r: int) -> str:
  return f"FM only r={r}"


def zero_shot_arm(r: int) -> str:
  return f"local r={r}, no fine-tuning"


RATIO = f"{clear_arm(3)} / teacher"
BASELINES = (UNTRAINED, COUNT, PRIOR)

CHECKS = (
    prerequisite("teacher_beats_counts", "the dense teacher generates better than per-class "
                 "pixel counts: lower FD", (TEACHER, FD), "<", (COUNT, FD)),
    prerequisite("teacher_follows_class", "the teacher follows the class: accuracy 0.3 above "
                 "the uniform prior", (TEACHER, ACC), ">", (PRIOR, ACC), by=0.3),
    prerequisite("teacher_beats_untrained", "the teacher learnt: lower FD than the untrained "
                 "network", (TEACHER, FD), "<", (UNTRAINED, FD)),
    prerequisite("not_saturated_real", "not saturated: the teacher's FD is above that of real "
                 "images", (TEACHER, FD), ">", (REAL, FD)),
    prerequisite("locality_costs", "not saturated: running the teacher with r=2 local "
                 "attention without fine-tuning is worse than the teacher (so there is "
                 "something to recover)", (zero_shot_arm(2), FD), ">", (TEACHER, FD)),
    claim("clear_r3_matches_teacher_fd", "CLEAR r=3 generates about as well as the teacher: "
          "FD ratio < 1.25", (RATIO, "FD ratio"), "<", 1.25),
    claim("clear_r3_matches_teacher_acc", "CLEAR r=3's class accuracy is within 0.05 of the "
          "teacher's", (clear_arm(3), ACC), ">", (TEACHER, ACC), by=-0.05),
    claim("distill_beats_fm_r2", "at r=2 distillation beats flow matching alone: lower FD",
          (clear_arm(2), FD), "<", (fm_arm(2), FD)),
    claim("distill_beats_fm_r3", "at r=3 distillation beats flow matching alone: lower FD",
          (clear_arm(3), FD), "<", (fm_arm(3), FD)),
    claim("finetune_recovers_r2", "distillation recovers what r=2 locality lost: lower FD "
          "than the teacher's weights with r=2 attention and no fine-tuning",
          (clear_arm(2), FD), "<", (zero_shot_arm(2), FD)),
    claim("larger_r_better", "a larger window is better: CLEAR r=3 has lower FD than r=2",
          (clear_arm(3), FD), "<", (clear_arm(2), FD)),
)


def count_model_sample(images: np.ndarray, labels: np.ndarray, want: np.ndarray,
                       seed: int) -> np.ndarray:
  """Per-class independent pixels: images (M, H, W, C), labels (M,) -> (len(want), H, W, C),
  each pixel of a class-c sample the value of that pixel in a random class-c training image."""
  rng = np.random.default_rng(seed)
  flat = images.reshape(len(images), -1)
  out = np.zeros((len(want), flat.shape[1]), images.dtype)
  for c in np.unique(want):
    rows = np.flatnonzero(want == c)
    pool = flat[labels == c]
    pick = rng.integers(0, len(pool), size=(len(rows), flat.shape[1]))
    out[rows] = pool[pick, np.arange(flat.shape[1])]
  return out.reshape(len(want), *images.shape[1:])


def attended_keys(height: int, width: int, radius: float | None) -> float:
  """Mean number of keys a query sees on the grid (radius None: dense)."""
  if radius is None:
    return float(height * width)
  y, x = np.divmod(np.arange(height * width), width)
  d2 = (y[:, None] - y[None]) ** 2 + (x[:, None] - x[None]) ** 2
  return float(np.mean(np.sum(d2 < radius ** 2, axis=1)))


def _programs(method, teacher, images, labels, want, image_shape, seed: int):
  """Jitted (generate, validation scores) of one method, compiled once for all its arms.

  generate(params, key) -> samples of `want`; scores(params, teacher_params) -> the
  validation flow-matching MSE and the velocity MSE to the dense teacher, with fixed noise
  and times (the same for every arm).
  """
  import jax
  import jax.numpy as jnp
  from tokenlab.nn.flow_matching import interpolate
  key_n, key_t = jax.random.split(jax.random.key(seed))
  x1 = jnp.asarray(images) * 2.0 - 1.0
  x0 = jax.random.normal(key_n, x1.shape)
  t = jax.random.uniform(key_t, (len(x1),))
  y = jnp.asarray(labels, jnp.int32)

  @jax.jit
  def scores(p, tp):
    xt = interpolate(x0, x1, t)
    v = method.velocity(p["dit"], xt, t, y)
    vt = teacher.velocity(tp["dit"], xt, t, y)      # the dense teacher
    return jnp.mean(jnp.square(v - (x1 - x0))), jnp.mean(jnp.square(v - vt))

  generate = jax.jit(lambda p, k: method.generate(p, jnp.asarray(want), k, image_shape))
  return generate, scores


def run_seed(ctx: Context) -> Trial:
  import flax.linen as nn
  import jax
  from tokenlab.config import load_config
  from tokenlab.evals.image_samples import evaluate_samples, load_split, train_classifier
  from tokenlab.registry import build_method
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  n = 10 if ctx.quick else NUM_SAMPLES
  quick = ["--config.train.steps=2"] if ctx.quick else []
  radii = RADII[:1] if ctx.quick else RADII
  rows, samples, methods = [], {}, {}
  with compile_cache(ctx.out("jax_cache")):
    # The scores below replace the trainer's own eval (one compile less per arm).
    no_eval = lambda batch_size, seed: iter(())
    # One pre-trained teacher for every seed (the paper starts from one pre-trained DiT):
    # trained once, with seed 0, in WORKDIR/teacher; later seeds reuse the finished run.
    teacher_dir = ctx.out("teacher")
    ctx.train(f"{EXPERIMENT}:size={size},stage=teacher", os.path.relpath(teacher_dir,
                                                                        ctx.workdir),
              [*quick, "--config.seed=0"], eval_iter_fn=no_eval)
    # --quick trains the teacher only (a smoke test of the pipeline in seconds; the student's
    # init_from / freeze / distillation path has its own unit tests in tests/test_clear.py).
    students = [] if ctx.quick else (
        [(clear_arm(r), r, 1) for r in radii] + [(fm_arm(r), r, 0) for r in radii])
    for arm, r, distill in students:
      folder = f"student_r{r}_{'distill' if distill else 'fm'}"
      ctx.train(f"{EXPERIMENT}:size={size},stage=student,radius={r},distill={distill}", folder,
                [f"--config.train.init_from={teacher_dir}", *quick],
                eval_iter_fn=no_eval)
      methods[arm] = folder

    train = load_split("digits", "train")
    val = load_split("digits", "validation")
    images, labels = train["image"], train["label"]
    example = {"image": images[:2], "label": labels[:2].astype(np.int32)}
    teacher = load_trained(teacher_dir, example)
    runs = {TEACHER: (teacher.method, teacher.params)}
    for arm, folder in methods.items():
      run = load_trained(ctx.path(folder), example)
      runs[arm] = (run.method, run.params)
    # --quick skips the local arms too: their programs are the unit tests' (compile time).
    for r in () if ctx.quick else radii:
      # The teacher's weights under local attention, no training (the students' start).
      cfg = load_config(f"{EXPERIMENT}:size={size},stage=student,radius={r},distill=0")
      runs[zero_shot_arm(r)] = (build_method(cfg.model), {"dit": teacher.params["dit"]})
    init = nn.unbox(jax.jit(teacher.method.init)(jax.random.key(ctx.seed), example))
    runs[UNTRAINED] = (teacher.method, init)

    want = np.repeat(np.arange(10), n // 10).astype(np.int32)
    hwc = images.shape[1:]
    key = jax.random.key(1000 + ctx.seed)       # the same noise for every arm
    programs = {}
    for arm, (method, params) in runs.items():
      if id(method) not in programs:
        programs[id(method)] = _programs(method, teacher.method, val["image"], val["label"],
                                         want, hwc, 2000 + ctx.seed)
      generate, scores = programs[id(method)]
      samples[arm] = np.asarray(generate(params, key))
      fm, to_teacher = scores(params, teacher.params)
      rows.append((arm, FM, float(fm)))
      if arm != TEACHER:
        rows.append((arm, TO_TEACHER, float(to_teacher)))
      grid = hwc[0] // method.config.patch_size
      local = method.config.attention == "neighborhood"
      rows.append((arm, KEYS, attended_keys(grid, grid, method.config.radius if local
                                            else None)))
    samples[COUNT] = count_model_sample(images, labels, want, 3000 + ctx.seed)

    # --quick: a classifier of a few steps (the cached 500-step one may not exist yet).
    clf = train_classifier("digits", steps=10, features=8) if ctx.quick else (
        train_classifier("digits"))
    fd = {}
    for arm, s in samples.items():
      out = evaluate_samples(clf, s, labels=want, reference=val["image"], real_floor=False)
      fd[arm] = out["fd"]
      rows += [(arm, ACC, out["class_accuracy"]), (arm, FD, out["fd"])]
    rows.append((PRIOR, ACC, 0.1))
    pick = np.random.default_rng(ctx.seed).permutation(len(images))[:n]
    real = evaluate_samples(clf, images[pick], labels=labels[pick], reference=val["image"],
                            real_floor=False)
    rows += [(REAL, ACC, real["class_accuracy"]), (REAL, FD, real["fd"])]
    if clear_arm(3) in fd:
      rows.append((RATIO, "FD ratio", fd[clear_arm(3)] / max(fd[TEACHER], 1e-9)))
  return Trial(rows, per_class_samples(samples, images, labels))


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """One sample per class from every arm (first seed), real digits on top."""
  path, arms = save_per_class_grid(ctx, trials[0].data)
  notes = ("samples.png rows (one sample per class 0..9, first seed): real training digits, "
           "then " + ", ".join(arms) + ". FD-classifier is a toy FID on the features of a "
           "small digits classifier (tokenlab.evals.image_samples); read it against the "
           f"'{REAL}' row (as many real images against the same 180 validation images). "
           "One teacher (2,000 steps, seed 0, in teacher/) is shared by all seeds, as the "
           "paper starts from one pre-trained model: the spread is that of the students' "
           "fine-tuning and of the sampling noise. "
           "Budget = steps: the four students the same steps, batch, learning rate and "
           "trained parameters (attention q/k/v/out only), from the same teacher. The "
           f"'{KEYS}' rows are counted, not trained: r=2 sees at most 9 and r=3 at most 25 of "
           "the 64 tokens (fewer at the image border).")
  return [path], notes
