"""CLEAR (tokenlab/methods/clear.py): the circular local attention of the student DiT, the
distillation losses, the teacher copy and what fine-tuning trains, the sampler, the attention
benchmark, and the quick repro."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.clear import Clear, ClearConfig
from tokenlab.method import random_params
from tokenlab.repro.clear import attended_keys, count_model_sample

GRID = 6            # a 6 x 6 grid of one-pixel tokens keeps every program tiny
BATCH = {"image": jnp.zeros((2, GRID, GRID, 1)), "label": jnp.zeros((2,), jnp.int32)}


def _method(**kw) -> Clear:
  cfg = dict(d_model=16, num_layers=1, num_heads=2, num_classes=10)
  cfg.update(kw)
  return Clear(ClearConfig(**cfg))


def _images(seed: int, n: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).uniform(size=(n, GRID, GRID, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def student():
  """A distilling r=2 student (one block) and random, non-zero parameters."""
  m = _method(attention="neighborhood", radius=2.0, distill=True)
  p = random_params(m, BATCH, seed=0, scale=0.3)
  return m, p


@pytest.fixture(scope="module")
def distilled(student):
  """Metrics and gradients of the distillation loss, student and teacher with the same
  weights (what fine-tuning starts from), one compile for the tests that read them."""
  m, p = student
  same = {"dit": p["dit"], "teacher": p["dit"]}
  batch = {"image": jnp.asarray(_images(3)), "label": jnp.array([1, 7])}
  (_, metrics), grads = jax.jit(jax.value_and_grad(
      lambda p: m.loss(p, batch, jax.random.key(0)), has_aux=True))(same)
  return same, batch, metrics, grads


def test_student_token_sees_only_its_circle():
  # The velocity at a token depends on the tokens inside its circle only (one block).
  m = _method(attention="neighborhood", radius=2.0)
  p = random_params(m, BATCH, seed=1, scale=0.3)
  x = _images(2, 1)
  v = jax.jit(lambda p, x: m.velocity(p["dit"], x, jnp.full((1,), 0.3),
                                      jnp.array([3])))
  base = np.asarray(v(p, x))
  query = (2, 2)
  for dy, dx in [(0, 1), (1, 1), (2, 0), (2, 2), (3, 1)]:
    y = x.copy()
    y[0, query[0] + dy, query[1] + dx, 0] += 1.0
    changed = np.abs(np.asarray(v(p, y)) - base)[0, query[0], query[1], 0] > 1e-6
    # dy^2 + dx^2 < r^2 = 4: (0,1) and (1,1) inside; (2,0) on the circle is outside.
    assert changed == (dy * dy + dx * dx < 4), (dy, dx)
  # The attended-key counts the repro reports: 9 (r=2) and 25 (r=3) in the interior, fewer
  # at the border.
  assert attended_keys(9, 9, 2) < 9 and attended_keys(9, 9, 3) < 25
  assert attended_keys(1, 1, 3) == 1 and attended_keys(4, 4, 10) == 16
  y, x_ = np.divmod(np.arange(81), 9)
  assert np.sum((y - 4) ** 2 + (x_ - 4) ** 2 < 4) == 9
  assert np.sum((y - 4) ** 2 + (x_ - 4) ** 2 < 9) == 25


def test_distillation_loss_is_fm_plus_half_of_each_term_and_locality_shows(distilled):
  # Same weights in student and teacher: only the r = 2 circle separates them, and that
  # alone gives other attention outputs and predictions (with a circle covering the grid the
  # attention is dense: tests/test_vision_blocks.py).
  _, _, metrics, _ = distilled
  assert float(metrics["attn_distill"]) > 1e-4 and float(metrics["pred_distill"]) > 1e-4
  expected = (metrics["flow_matching"] + 0.5 * metrics["pred_distill"]
              + 0.5 * metrics["attn_distill"])
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_teacher_gets_no_gradient_and_finetuning_trains_attention_only(distilled):
  from experiments.clear import FREEZE_ALL_BUT_ATTENTION
  from tokenlab.train.init_from import check_freeze, freeze_labels, param_path
  same, _, _, grads = distilled
  # numpy, not jnp: eager jnp ops would compile once per leaf shape.
  assert all(np.abs(np.asarray(g)).max() == 0.0 for g in jax.tree.leaves(grads["teacher"]))
  assert np.abs(np.asarray(grads["dit"]["block_0"]["attn"]["query"]["kernel"])).max() > 0
  labels = jax.tree_util.tree_flatten_with_path(
      freeze_labels(FREEZE_ALL_BUT_ATTENTION)(same))[0]
  trained = sorted(param_path(k) for k, label in labels if label == "train")
  assert trained == sorted(f"dit/block_0/attn/{n}/kernel"
                           for n in ("query", "key", "value", "out"))
  check_freeze(FREEZE_ALL_BUT_ATTENTION, same)   # matches some, not all


def test_teacher_run_starts_student_and_frozen_teacher(student):
  m, p = student
  loaded = {"dit": jax.tree.map(lambda a: np.asarray(a) + 1.0, p["dit"])}
  fresh = jax.tree.map(np.zeros_like, p)
  out = m.adopt_params(fresh, loaded)
  for name in ("dit", "teacher"):
    for a, b in zip(jax.tree.leaves(out[name]), jax.tree.leaves(loaded["dit"])):
      np.testing.assert_array_equal(a, b)
  # A distilled run's own checkpoint (with its teacher) is restored as it is.
  again = m.adopt_params(fresh, {"dit": p["dit"], "teacher": loaded["dit"]})
  np.testing.assert_array_equal(again["dit"]["final"]["proj"]["kernel"],
                                p["dit"]["final"]["proj"]["kernel"])
  with pytest.raises(Exception, match="neighborhood"):
    _method(distill=True)


def test_sampler_untrained_is_clipped_noise_and_guidance_runs():
  m = _method()      # dense: the sampler is the same for every attention, and compiles faster
  p = random_params(m, BATCH, seed=2, scale=0.3)
  labels = jnp.array([2, 9])
  gen = jax.jit(lambda p, s: m.generate(p, labels, jax.random.key(5), (GRID, GRID, 1),
                                        num_steps=2, cfg_scale=s), static_argnums=1)
  # adaLN-Zero: an untrained DiT's final projection is zero, so it predicts velocity 0 and
  # Euler returns its noise (also through the guided [conditional; null] path).
  final = jax.tree.map(np.zeros_like, p["dit"]["final"])
  untrained = {**p, "dit": {**p["dit"], "final": final}}
  out = gen(untrained, 2.0)
  noise = jax.random.normal(jax.random.key(5), (2, GRID, GRID, 1))
  np.testing.assert_allclose(out, jnp.clip((noise + 1) / 2, 0, 1), atol=1e-6)
  guided = np.asarray(gen(p, 2.0))
  assert np.abs(guided - np.asarray(out)).max() > 1e-3
  assert guided.min() >= 0.0 and guided.max() <= 1.0


def test_count_model_draws_each_pixel_from_its_class():
  images = np.zeros((4, 2, 2, 1), np.float32)
  images[2:] = 1.0                       # class 1 all ones, class 0 all zeros
  out = count_model_sample(images, np.array([0, 0, 1, 1]), np.array([1, 0, 1]), seed=0)
  np.testing.assert_array_equal(out[:, 0, 0, 0], [1.0, 0.0, 1.0])
  assert out.shape == (3, 2, 2, 1)


def test_bench_runs_in_a_tiny_setting(capsys):
  from tokenlab.bench import clear_attention as bench
  assert bench.main(["--grids", "3,6", "--radius", "2", "--repeats", "1", "--d-model", "8",
                     "--heads", "1", "--cases", "forward"]) == 0
  out = capsys.readouterr().out
  assert "dense/local" in out and "6x6" in out and "time(6x6) / time(3x3)" in out


def test_repro_quick(tmp_path):
  from tokenlab import repro
  result = repro.run("clear", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  values = {(arm, metric): mean for arm, metric, mean, _, _ in result.rows}
  # --quick trains and scores the teacher only, beside the baselines.
  for key in [("teacher (dense)", "FD-classifier"), ("teacher (dense)", "class accuracy"),
              ("teacher (dense)", "val flow-matching MSE"),
              ("untrained DiT", "val velocity MSE to teacher"),
              ("untrained DiT", "FD-classifier"), ("per-class pixel counts", "FD-classifier")]:
    assert np.isfinite(values[key]), key
  assert (tmp_path / "repro.md").exists() and (tmp_path / "samples.png").exists()
