"""TEASER (tokenlab/methods/teaser.py): adaptive pooling, each token seeing the image at its
own scale, the token-cycle loss, the untrained generator, config errors, the quick repro."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.errors import ConfigError
from tokenlab.methods.teaser import (Teaser, TeaserConfig, TokenEncoder, cell_grid,
                                     numbers_per_image, pool, token_cycle_loss)

# Inits compile several times faster with an "unsafe_rbg" key than with threefry on CPU.
_KEY = jax.random.key(0, impl="unsafe_rbg")
_TINY = dict(width=2, token_dim=3, d_model=8, num_heads=2, patch_size=8)


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)


def test_pool_is_the_block_mean():
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  want = x.reshape(2, 2, 4, 2, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(pool(jnp.asarray(x), 2), want, rtol=1e-6)
  np.testing.assert_allclose(pool(jnp.asarray(x), 8), x)
  np.testing.assert_allclose(pool(jnp.asarray(x), 1)[:, 0, 0], x.mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_allclose(pool(jnp.asarray(x), 1, 2)[:, 0],
                             x.reshape(2, 8, 2, 4, 3).mean(axis=(1, 3)), rtol=1e-5)
  assert cell_grid(4) == (2, 2) and cell_grid(2) == (1, 2) and cell_grid(6) == (2, 3)
  with pytest.raises(ValueError, match="pool evenly"):
    pool(jnp.asarray(x), 3)


def test_token_cycle_loss_sums_the_per_scale_mse_over_real_images():
  rng = np.random.default_rng(1)
  tokens, cycled = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  want = sum(np.mean((cycled[:, s] - tokens[:, s]) ** 2) for s in range(4))
  np.testing.assert_allclose(token_cycle_loss(tokens, cycled), want, rtol=1e-5)
  assert float(token_cycle_loss(tokens, tokens)) == 0.0
  # A padding row (mask 0) does not count, whatever its tokens.
  mask = np.array([1, 1, 0], np.float32)
  moved = cycled.copy()
  moved[2] += 100.0
  np.testing.assert_allclose(token_cycle_loss(tokens, moved, mask),
                             token_cycle_loss(tokens[:2], cycled[:2]), rtol=1e-5)


@pytest.fixture(scope="module")
def encoders():
  """{kind: encode function} of tiny multi- and single-scale encoders (4 tokens each),
  initialised eagerly (a jitted init compiles for seconds; these are tiny)."""
  out = {}
  for kind in ("multi", "single"):
    enc = TokenEncoder(TeaserConfig(tokens=kind, **_TINY))
    params = enc.init(_KEY, _images(1))
    out[kind] = jax.jit(lambda x, enc=enc, params=params: enc.apply(params, x))
  return out


def _structured(n: int = 2) -> np.ndarray:
  """Images whose quadrants differ in brightness and whose 4x4 blocks each have one bright
  2x2 cell (top-left), plus noise: every rearrangement below changes some pixels' context."""
  x = 0.1 * _images(n)
  for q, (r, c) in enumerate(((0, 0), (0, 16), (16, 0), (16, 16))):
    x[:, r:r + 16, c:c + 16] += 0.2 * q
  x.reshape(n, 8, 2, 2, 8, 2, 2, 3)[:, :, 0, :, :, 0] += 0.3
  return x


def _swap_quadrants(x: np.ndarray) -> np.ndarray:
  """Top-left <-> bottom-right 16x16 quadrant (each moved whole)."""
  y = x.copy()
  y[:, :16, :16], y[:, 16:, 16:] = x[:, 16:, 16:], x[:, :16, :16]
  return y


def _shuffle_within_4x4(x: np.ndarray) -> np.ndarray:
  """In every 4x4 pixel block, its four 2x2 cells mirrored (the block keeps its pixels)."""
  b = x.reshape(-1, 8, 2, 2, 8, 2, 2, 3)           # (B, by, sy, py, bx, sx, px, C)
  return np.ascontiguousarray(b[:, :, ::-1, :, :, ::-1]).reshape(x.shape)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(B, S) relative change of each token."""
  return np.abs(a - b).max(-1) / np.abs(b).max(-1)


def test_each_multi_scale_token_sees_the_image_at_its_own_scale(encoders):
  x = _structured()
  base = np.asarray(encoders["multi"](x))
  assert base.shape == (2, 4, 3)
  # The 1x1 token pools the deepest map (one cell per 16x16 quadrant): moving quadrants
  # whole leaves it unchanged; every finer token sees where the quadrants are.
  quad = np.asarray(encoders["multi"](_swap_quadrants(x)))
  np.testing.assert_allclose(quad[:, 0], base[:, 0], atol=1e-6)
  assert _changed(quad, base)[:, 1:].min() > 1e-3
  # The 8x8 token pools the finest map over 4x4-pixel blocks: rearranging the 2x2 cells
  # inside each block leaves it unchanged, while every coarser token reads the arrangement.
  fine = np.asarray(encoders["multi"](_shuffle_within_4x4(x)))
  np.testing.assert_allclose(fine[:, 3], base[:, 3], atol=1e-6)
  assert _changed(fine, base)[:, :3].min() > 1e-3


def test_single_scale_tokens_are_the_deepest_cells(encoders):
  x = _structured()
  base = np.asarray(encoders["single"](x))
  quad = np.asarray(encoders["single"](_swap_quadrants(x)))
  # Cells in raster order: swapping quadrants 0 and 3 swaps tokens 0 and 3, keeps 1 and 2.
  np.testing.assert_allclose(quad[:, [3, 1, 2, 0]], base, atol=1e-6)
  assert _changed(quad, base)[:, [0, 3]].min() > 1e-3


def test_both_kinds_give_the_same_token_count_and_width():
  for kind in ("multi", "single"):
    cfg = TeaserConfig(tokens=kind, **_TINY)
    shape = jax.eval_shape(lambda x, c=cfg: TokenEncoder(c).init_with_output(_KEY, x)[0],
                           jax.ShapeDtypeStruct((5, 32, 32, 3), jnp.float32))
    assert shape.shape == (5, 4, 3)
    assert numbers_per_image(cfg) == 12


def test_bad_configs_name_the_fix():
  with pytest.raises(ConfigError, match="double"):
    Teaser(TeaserConfig(scales=(1, 2, 4, 16)))
  with pytest.raises(ConfigError, match="cells"):
    Teaser(TeaserConfig(tokens="single", scales=(1, 2, 4)))._check(
        np.zeros((1, 32, 32, 3), np.float32))     # 3 tokens: 1x3 cells of a 4x4 map
  with pytest.raises(ConfigError, match="tokens"):
    Teaser(TeaserConfig(tokens="grid"))
  with pytest.raises(ConfigError, match="channels"):
    Teaser(TeaserConfig())._check(np.zeros((1, 32, 32, 1), np.float32))
  with pytest.raises(ConfigError, match="pyramid"):
    Teaser(TeaserConfig())._check(np.zeros((1, 24, 24, 3), np.float32))


def test_repro_quick(tmp_path):
  """The quick reproduction: one arm, 2 steps through the real trainer, scored with the
  baselines, the figure written; it claims nothing."""
  from tokenlab import repro
  report = repro.run("teaser", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  values = {(a, m): v for a, m, v, _, _ in report.rows}
  assert values[("dataset mean image", "PSNR dB")] > 5.0
  assert np.isfinite(values[("multi-scale + cycle", "PSNR dB")])
  assert os.path.isfile(tmp_path / "teaser_reconstructions.png")
