"""MotionAura (tokenlab/methods/motionaura.py) and its blocks: the discrete diffusion forward
process (t = 0 identity, t = 1 all masked / uniform, context untouched), the sampler (context
never changes, an exact x0 oracle is recovered), the spectral block (circular-shift
equivariant, one layer mixes globally, an all-ones filter is the identity), the method's
context layout and loss, and the quick reproduction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.nn import discrete_diffusion as dd
from tokenlab.nn.spectral import (GlobalFilter, SpectralBlock, attention_mixing_flops,
                                  spectral_mixing_flops)

_K = 5          # codes
_MASK = _K      # the absorbing state's id
_KEY = jax.random.key(0)


def _tokens(b: int = 3, n: int = 12, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, _K, (b, n)).astype(np.int32)


def _eligible(b: int = 3, n: int = 12, context: int = 4) -> np.ndarray:
  return np.broadcast_to(np.arange(n) >= context, (b, n))


def test_forward_process_endpoints_and_context():
  x0, eligible = _tokens(4, 400), _eligible(4, 400, 100)
  t = jnp.array([0.0, 1.0, 0.2, 0.8])   # one row per level

  @jax.jit
  def corrupt(r):
    return {p: dd.corrupt(r, x0, t, eligible, process=p, vocab_size=_K, mask_id=_MASK)
            for p in dd.PROCESSES}
  for process, (xt, hit) in corrupt(_KEY).items():
    xt, hit = np.asarray(xt), np.asarray(hit)
    # t = 0: the identity.
    np.testing.assert_array_equal(xt[0], x0[0])
    assert not np.any(hit[0])
    # t = 1: every eligible token is hit; the context (not eligible) never is, at any t.
    np.testing.assert_array_equal(hit[1], eligible[1])
    np.testing.assert_array_equal(xt[:, :100], x0[:, :100])
    if process == "absorb":
      assert np.all(xt[1, 100:] == _MASK)
    else:
      # Uniform over the K codes: each code close to 1/K of the 300 redrawn tokens.
      counts = np.bincount(xt[1, 100:], minlength=_K + 1)
      assert counts[_K] == 0 and np.all(np.abs(counts[:_K] / 300 - 1 / _K) < 0.07)
    # An intermediate t hits about t of the eligible tokens.
    np.testing.assert_allclose(hit[2:, 100:].mean(1), [0.2, 0.8], atol=0.08)


def test_loss_weights_and_x0_cross_entropy():
  x0, eligible = _tokens(), _eligible()
  xt = x0.copy()
  xt[:, 6:] = _MASK
  w = np.asarray(dd.loss_weights(xt, eligible, process="absorb", mask_id=_MASK))
  np.testing.assert_array_equal(w, (np.arange(12) >= 6)[None].repeat(3, 0))
  w_uniform = np.asarray(dd.loss_weights(xt, eligible, process="uniform", mask_id=_MASK))
  np.testing.assert_array_equal(w_uniform, eligible)
  # A perfect x0 prediction: nll ~ 0 and every scored token right; uniform logits: log K.
  perfect = 50.0 * jax.nn.one_hot(x0, _K)
  nll, count, correct = dd.x0_cross_entropy(perfect, x0, w)
  assert float(nll) < 1e-6 and float(count) == 18 and float(correct) == 18
  nll, count, _ = dd.x0_cross_entropy(jnp.zeros((3, 12, _K)), x0, w)
  np.testing.assert_allclose(float(nll) / float(count), np.log(_K), rtol=1e-5)


def test_sampler_keeps_context_recovers_an_oracle_and_follows_the_schedule():
  """Both processes: an exact x0 oracle is recovered and the context is returned unchanged;
  a random denoiser still leaves the context and gives codes only; the absorbing sampler
  reveals exactly the maskgit schedule's counts (seen through a callback)."""
  from tokenlab.nn.maskgit import masked_schedule
  target, known = _tokens(3, 12, seed=1), ~_eligible()
  given = np.where(known, target, _tokens(3, 12, seed=2))   # unknown values are ignored
  oracle = jnp.asarray(30.0 * jax.nn.one_hot(target, _K + 1))   # never the mask id
  seen = []

  def counting_oracle(x, t):
    jax.debug.callback(lambda m: seen.append(np.asarray(m).tolist()), jnp.sum(x == _MASK, -1))
    return oracle
  noise = lambda x, t: jax.random.normal(jax.random.fold_in(_KEY, 7), (*x.shape, _K + 1))

  @jax.jit
  def run(r):
    return {(p, name): dd.sample(fn, given, known, 4, r, process=p, vocab_size=_K,
                                 mask_id=_MASK)
            for p in dd.PROCESSES for name, fn in (("oracle", counting_oracle),
                                                   ("noise", noise))}
  out = jax.tree.map(np.asarray, run(_KEY))
  for p in dd.PROCESSES:
    np.testing.assert_array_equal(out[(p, "oracle")], target)
    rand = out[(p, "noise")]
    np.testing.assert_array_equal(rand[known], given[known])
    assert rand.min() >= 0 and rand.max() < _K
  # The absorbing oracle's calls saw 8 masked tokens, then the schedule's counts (the
  # uniform sampler's calls see no mask id).
  plan = [[8] * 3] + np.asarray(masked_schedule(4, np.full(3, 8)))[:-1].tolist()
  assert [c for c in seen if any(c)] == plan


_GRID = (3, 4, 4)


def _roll(x: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
  return np.roll(x.reshape(len(x), *_GRID, -1), shift, axis=(1, 2, 3)).reshape(x.shape)


def _random_params(module, x, scale=1.0):
  """Random normal parameters of `module`'s shapes (eval_shape: nothing compiled), with a
  filter far from zero so that mixing is visible."""
  shapes = jax.eval_shape(module.init, _KEY, x)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * scale,
                      jax.tree.map(lambda b: getattr(b, "value", b), shapes,
                                   is_leaf=lambda b: hasattr(b, "value")))


def test_spectral_mixing_is_shift_equivariant_global_and_ones_is_identity():
  x = np.random.default_rng(0).normal(size=(1, 48, 6)).astype(np.float32)
  shifts = ((1, 0, 0), (0, 2, 1), (2, 3, 3))
  filt, block = GlobalFilter(_GRID), SpectralBlock(_GRID, mlp_dim=8)
  fp, bp = _random_params(filt, x), _random_params(block, x, 0.5)
  ones = {"params": {"filter_real": np.ones_like(fp["params"]["filter_real"]),
                     "filter_imag": np.zeros_like(fp["params"]["filter_imag"])}}
  y = x.copy()
  y[:, 17] += 1.0
  # Inputs: x, its rolls and x with one token changed, in one batch (one compiled call).
  xs = np.concatenate([x] + [_roll(x, s) for s in shifts] + [y])
  f_out, b_out, identity = map(np.asarray, jax.jit(
      lambda v: (filt.apply(fp, v), block.apply(bp, v), filt.apply(ones, v)))(xs))
  for out in (f_out, b_out):
    for i, s in enumerate(shifts):
      np.testing.assert_allclose(out[1 + i:2 + i], _roll(out[:1], s), atol=1e-4)
  # One layer mixes globally: changing one token changes every token's filter output.
  assert np.all(np.abs(f_out[-1] - f_out[0]).max(-1) > 1e-4)
  # An all-ones filter is the identity (norm='ortho').
  np.testing.assert_allclose(identity, xs, atol=1e-5)
  with pytest.raises(ValueError, match="do not form the grid"):
    jax.eval_shape(lambda v: filt.apply(fp, v), x[:, :40])


def test_mixing_flops():
  # N = 144 tokens of width 64 (the reproduction's grid): FFT mixing is ~40x cheaper.
  assert spectral_mixing_flops((4, 6, 6), 64) < attention_mixing_flops(144, 64) / 20
  assert attention_mixing_flops(10, 4) == 8 * 10 * 16 + 4 * 100 * 4


def test_method_layout_config_errors_and_shapes():
  from tokenlab.config import load_config
  from tokenlab.errors import ConfigError
  from tokenlab.registry import build_method
  spec = "experiments/motionaura.py:size=tiny,grid=3x2x2,codes=6,context=1"
  method = build_method(load_config(spec).model)
  # Context = the first latent frame's 4 tokens of the (3, 2, 2) grid, row-major.
  np.testing.assert_array_equal(method.known(), np.arange(12) < 4)
  assert method.mask_id == 6
  batch = {"tokens": np.zeros((2, 3, 2, 2), np.int32), "mask": np.ones(2, np.float32)}
  params = jax.eval_shape(method.init, _KEY, batch)
  logits = jax.eval_shape(method.logits, params, jnp.zeros((2, 12), jnp.int32), jnp.zeros(2))
  assert logits.shape == (2, 12, 6)
  out = jax.eval_shape(lambda p: method.predict_tokens(p, batch["tokens"], _KEY), params)
  assert out.shape == (2, 12) and out.dtype == jnp.int32
  for bad in ("--config.model.context_frames=3", "--config.model.denoiser=conv",
              "--config.model.process=gauss"):
    with pytest.raises(ConfigError):
      build_method(load_config(spec, [bad]).model)
  with pytest.raises(ConfigError, match="tokenizer_workdir"):
    method.loss(params, {"video": np.zeros((1, 8, 48, 48, 1), np.float32)}, _KEY)


def test_repro_quick(tmp_path):
  """One tokenizer (frame-masked) and one spectral denoiser, 2 steps each, through the real
  trainer; predictions of 4 validation clips decoded and scored (claims nothing)."""
  from tokenlab import repro
  result = repro.run("motionaura", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  values = {(a, m): v for a, m, v, _, _ in result.rows}
  from tokenlab.repro.motionaura import COPY, FUT, MA, RECON, TOK_ARM
  for row in ((MA, FUT), (COPY, FUT), (TOK_ARM["frame"], RECON)):
    assert np.isfinite(values[row]), row
  assert (tmp_path / "repro.md").exists() and (tmp_path / "motionaura_predictions.png").exists()
