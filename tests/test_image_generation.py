"""Image generation blocks: MaskGIT schedule and decoding, class-conditional AR decoding with
and without the KV cache, classifier-free guidance, flow matching and the Euler sampler, the
flow head, and next-scale (VAR) residual quantization."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenlab.methods.transformer_lm import TransformerLMConfig, TransformerLMModule
from tokenlab.nn import flow_matching as fm
from tokenlab.nn import next_scale as ns
from tokenlab.nn.image_ar import prefix_sequence, prefix_vocab_size, sample_image_tokens
from tokenlab.nn.maskgit import maskgit_decode, masked_schedule, unmask_counts

# Sampling keys are "unsafe_rbg": threefry's bit generator compiles several times slower.
RNG = jax.random.key(0, impl="unsafe_rbg")

# ------------------------------------------------------------------------------ MaskGIT


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("tokens,steps", [(16, 8), (64, 12), (5, 5), (256, 1)])
def test_unmask_counts_sum_to_total_and_reveal_every_step(schedule, tokens, steps):
  counts = unmask_counts(tokens, steps, schedule)
  assert counts.shape == (steps,) and counts.sum() == tokens
  assert (counts >= 1).all()                   # every step reveals something (steps <= N)
  masked = tokens - np.cumsum(counts)
  assert (np.diff(masked) < 0).all() and masked[-1] == 0


def test_cosine_schedule_reveals_few_first_and_more_later():
  counts = unmask_counts(256, 8, "cosine")
  assert counts[0] < counts[-2] and counts[0] <= 256 // 8
  # Exactly floor(N cos(pi/2 (t+1)/T)) stays masked when no step needs lowering.
  expected = np.floor(256 * np.cos(np.pi / 2 * np.arange(1, 8) / 8)).astype(int)
  np.testing.assert_array_equal(np.asarray(masked_schedule(8, 256))[:-1], expected)


def test_more_steps_than_tokens_reveals_nothing_after_the_grid_is_full():
  counts = unmask_counts(4, 6)
  assert counts.sum() == 4 and (counts >= 0).all() and (counts[:4] == 1).all()


def _oracle(target, vocab):
  """logits_fn that knows the target grid: one-hot logits of height 30 everywhere."""
  return lambda tokens: 30.0 * jax.nn.one_hot(
      jnp.broadcast_to(target, tokens.shape), vocab)


def test_maskgit_with_an_oracle_recovers_the_target_on_schedule():
  batch, n, vocab, steps = 3, 16, 10, 6
  target = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (batch, n)), jnp.int32)
  tokens, history = jax.jit(lambda r: maskgit_decode(
      _oracle(target, vocab), (batch, n), steps, mask_id=vocab, rng=r, temperature=1.0,
      choice_temperature=4.5, return_history=True))(RNG)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(target))
  masked_per_step = np.asarray(history).sum(-1)                          # (T, B)
  want = np.asarray(masked_schedule(steps, n))
  np.testing.assert_array_equal(masked_per_step, np.broadcast_to(want[:, None], (steps, batch)))
  # A position once decided stays decided.
  hist = np.asarray(history)
  assert not (hist[1:] & ~hist[:-1]).any()


def test_maskgit_keeps_known_tokens_and_uses_cfg():
  batch, n, vocab = 2, 12, 7
  rng = np.random.default_rng(1)
  cond_t = jnp.asarray(rng.integers(0, vocab, (batch, n)), jnp.int32)
  null_t = (cond_t + 1) % vocab
  both = jnp.concatenate([cond_t, null_t])
  fn = lambda tokens: 30.0 * jax.nn.one_hot(both, vocab)    # [conditional; null] logits
  known = jnp.where(jnp.arange(n) < 4, 0, vocab).astype(jnp.int32)[None].repeat(batch, 0)
  decode = jax.jit(lambda scale: maskgit_decode(
      fn, (batch, n), 4, mask_id=vocab, rng=RNG, tokens=known, cfg_scale=scale))
  for scale, want in ((1.0, cond_t), (0.0, null_t)):
    out = np.asarray(decode(scale))
    np.testing.assert_array_equal(out[:, :4], 0)
    np.testing.assert_array_equal(out[:, 4:], np.asarray(want)[:, 4:])


# --------------------------------------------------------------------- autoregressive


CODES, CLASSES, GRID = 8, 3, 12


@pytest.fixture(scope="module")
def tiny_lm():
  cfg = TransformerLMConfig(vocab_size=prefix_vocab_size(CODES, CLASSES), d_model=32,
                            num_layers=2, num_heads=4, num_kv_heads=2)
  module = TransformerLMModule(cfg)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                              jnp.zeros((1, GRID + 1), jnp.int32)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (rng.normal(size=s.value.shape) * 0.5).astype(np.float32),
                        shapes["params"], is_leaf=lambda s: hasattr(s, "value"))
  return module, params


_JITTED = {}


def _sample(model, labels, cfg_scale=None, **kwargs):
  """Samples with one compiled function per (kwargs, guided or not); the labels and the
  guidance scale are traced, so the calls of a test share compilations."""
  module, params = model
  key = (tuple(sorted(kwargs.items())), cfg_scale is None)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(lambda p, y, s, r: sample_image_tokens(
        module, p, y, r, num_tokens=GRID, num_codes=CODES, num_classes=CLASSES,
        cfg_scale=s, **kwargs))
  return np.asarray(_JITTED[key](params, jnp.asarray(labels), cfg_scale, RNG))


def test_ar_decoding_with_cache_equals_recomputing_everything(tiny_lm):
  """Sampling (temperature 1, top-k) with guidance: the cached loop, [conditional; null] rows
  in one cache, draws the same tokens as recomputing the whole buffer every step."""
  labels = [0, 2, 1, 3]                 # 3 = the null class (unconditional)
  kwargs = dict(temperature=1.0, top_k=4, cfg_scale=2.5)
  cached = _sample(tiny_lm, labels, cached=True, **kwargs)
  uncached = _sample(tiny_lm, labels, cached=False, **kwargs)
  np.testing.assert_array_equal(cached, uncached)
  assert cached.shape == (4, GRID) and cached.min() >= 0 and cached.max() < CODES
  assert len(np.unique(cached)) > 2         # sampled, not collapsed onto one code


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional(tiny_lm):
  labels = [0, 1, 2]
  plain = _sample(tiny_lm, labels, temperature=0.0)
  null = _sample(tiny_lm, [CLASSES] * 3, temperature=0.0)
  np.testing.assert_array_equal(_sample(tiny_lm, labels, temperature=0.0, cfg_scale=1.0), plain)
  np.testing.assert_array_equal(_sample(tiny_lm, labels, temperature=0.0, cfg_scale=0.0), null)
  assert not np.array_equal(plain, null)   # the class prefix does change the samples


def test_prefix_sequence_layout():
  codes = jnp.array([[1, 2], [3, 4]])
  out = prefix_sequence(codes, jnp.array([0, 2]), CODES, CLASSES, drop=jnp.array([False, True]))
  np.testing.assert_array_equal(np.asarray(out), [[CODES, 1, 2], [CODES + CLASSES, 3, 4]])


# ---------------------------------------------------------------------- flow matching


def test_euler_on_the_exact_field_to_a_point_lands_on_it_and_the_loss_is_zero():
  target = jnp.array([[1.5, -2.0, 0.25]])
  point_field = lambda x, t: (target - x) / (1.0 - t[:, None])
  noise = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  for steps in (1, 50):
    out = fm.euler_sample(point_field, noise, steps)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(target, (5, 3)), atol=1e-5)
  t = np.random.default_rng(1).uniform(0, 0.99, size=5).astype(np.float32)
  loss = fm.flow_matching_loss(point_field, noise, jnp.broadcast_to(target, (5, 3)), t)
  assert float(loss) < 1e-8
  wrong = lambda x, t: point_field(x, t) + 0.1
  assert float(fm.flow_matching_loss(wrong, noise, jnp.broadcast_to(target, (5, 3)), t)) > 5e-3


def test_euler_on_the_exact_gaussian_field_maps_noise_to_the_target_gaussian():
  """x0 ~ N(0, 1) to x1 ~ N(mu, s^2): x_t = t mu + sigma_t x0, sigma_t^2 = (1-t)^2 + t^2 s^2,
  so v(x, t) = mu + sigma_t'/sigma_t (x - t mu); with enough steps x0 -> mu + s x0."""
  mu, s = 2.0, 0.5

  def field(x, t):
    t = t[:, None]
    sig = jnp.sqrt((1 - t) ** 2 + (t * s) ** 2)
    dsig = (-(1 - t) + t * s * s) / sig
    return mu + dsig / sig * (x - t * mu)

  noise = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
  out = fm.euler_sample(field, noise, 200)
  # Euler is first order: about 0.01 off at 200 steps for |x0| near 3.
  np.testing.assert_allclose(np.asarray(out), np.asarray(mu + s * noise), atol=2e-2)
  assert float(jnp.max(jnp.abs(fm.euler_sample(field, noise, 2) - (mu + s * noise)))) > 0.05


def test_euler_cfg_is_linear_in_the_guidance_scale():
  a, b = jnp.array([[1.0, 2.0]]), jnp.array([[-1.0, 0.0]])
  both = jnp.concatenate([jnp.broadcast_to(a, (3, 2)), jnp.broadcast_to(b, (3, 2))])
  field = lambda x, t: (both - x) / (1.0 - t[:, None])     # [to a; to b]
  noise = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
  for scale, want in ((1.0, a), (0.0, b), (2.0, 2 * a - b)):
    out = fm.euler_sample(field, noise, 8, cfg_scale=scale)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(want, (3, 2)), atol=1e-5)


def test_flow_head_starts_at_zero_and_learns_a_conditional_flow():
  """Init, the zero output at init, 150 Adam steps and Euler sampling in one compiled
  program (compilation is most of this test's time)."""
  head = fm.FlowHead(width=32, depth=2)
  # Targets: a point chosen by a one-hot condition; the head must learn to reach it.
  points = jnp.array([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]])
  opt = optax.adam(1e-2)

  def loss_fn(p, rng):
    r1, r2, r3 = jax.random.split(rng, 3)
    cls = jax.random.randint(r1, (128,), 0, 3)
    x1, z = points[cls], jax.nn.one_hot(cls, 3)
    vel = lambda xt, t: head.apply(p, xt, t, z)
    return fm.flow_matching_loss(vel, jax.random.normal(r2, (128, 2)), x1,
                                 fm.logit_normal_t(r3, (128,)))

  @jax.jit
  def run(rng):
    r_init, r_train, r_noise = jax.random.split(rng, 3)
    x, t, z = jnp.ones((4, 5, 2)), jnp.ones((4, 5)), jnp.ones((4, 5, 3))
    p = head.init(r_init, x, t, z)
    at_init = head.apply(p, x, t, z)                  # (4, 5, 2): leading axes kept

    def body(carry, r):
      p, s = carry
      loss, g = jax.value_and_grad(loss_fn)(p, r)
      u, s = opt.update(g, s)
      return (optax.apply_updates(p, u), s), loss
    (p, _), losses = jax.lax.scan(body, (p, opt.init(p)), jax.random.split(r_train, 150))
    z = jax.nn.one_hot(jnp.arange(60) % 3, 3)
    out = fm.euler_sample(lambda xt, t: head.apply(p, xt, t, z),
                          jax.random.normal(r_noise, (60, 2)), 20)
    return at_init, losses, jnp.linalg.norm(out - points[jnp.arange(60) % 3], axis=-1)

  at_init, losses, err = run(RNG)
  assert at_init.shape == (4, 5, 2) and float(jnp.abs(at_init).max()) == 0  # zero-init output
  assert float(losses[-20:].mean()) < 0.25 * float(losses[:5].mean())
  assert float(jnp.median(err)) < 0.5      # untrained (zero velocity): about 2.2


# ------------------------------------------------------------------------- next scale


def _smooth_map(seed=0, size=8, dim=2):
  """(2, size, size, dim): a 2x2 pattern blown up (nearest, numpy) plus fine noise."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(2, 2, 2, dim)).repeat(size // 2, 1).repeat(size // 2, 2)
  return (coarse + 0.2 * rng.normal(size=(2, size, size, dim))).astype(np.float32)


def test_multiscale_quantization_is_exact_with_an_exact_quantizer():
  f = _smooth_map()
  identity = lambda z: (jnp.zeros(z.shape[:-1], jnp.int32), z)
  codes, values, f_hat, norms = jax.jit(
      lambda f: ns.multiscale_quantize(f, (1, 2, 4, 8), identity))(f)
  np.testing.assert_allclose(np.asarray(f_hat), np.asarray(f), atol=1e-5)
  assert float(norms[-1]) < 1e-5
  assert [c.shape for c in codes] == [(2, s, s) for s in (1, 2, 4, 8)]
  np.testing.assert_allclose(np.asarray(ns.reconstruct(values, 8)), np.asarray(f_hat), atol=1e-6)


def test_multiscale_residuals_shrink_with_a_codebook():
  grid = np.arange(-3, 3.01, 0.25, dtype=np.float32)
  codebook = jnp.asarray(np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2))
  f = _smooth_map(seed=1)
  codes, values, f_hat, norms = jax.jit(lambda f: ns.multiscale_quantize(
      f, ns.default_scales(8), ns.codebook_quantizer(codebook)))(f)
  norms = np.asarray(norms)
  assert (np.diff(norms) < 0).all(), norms
  assert norms[-1] <= 0.125 + 1e-6       # at most half a grid step left per element
  assert norms[0] < float(np.sqrt(np.mean(f ** 2)))
  # Codes decode to the values, and the flat sequence round-trips.
  np.testing.assert_array_equal(np.asarray(jnp.take(codebook, codes[2], axis=0)),
                                np.asarray(values[2]))
  flat = ns.flatten_scales(codes)
  assert flat.shape == (2, 1 + 4 + 16 + 64)
  for a, b in zip(ns.unflatten_scales(flat, (1, 2, 4, 8)), codes):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_next_scale_inputs_are_the_running_reconstruction_resampled():
  f = _smooth_map(seed=2)
  identity = lambda z: (jnp.zeros(z.shape[:-1], jnp.int32), z)

  @jax.jit
  def run(f):
    _, values, _, _ = ns.multiscale_quantize(f, (1, 2, 4, 8), identity)
    inputs = ns.next_scale_inputs(values, (1, 2, 4, 8))
    return inputs, ns.downsample(ns.reconstruct(values[:2], 8), 4).reshape(2, 16, 2)

  inputs, want = run(f)
  assert inputs.shape == (2, 4 + 16 + 64, 2)
  np.testing.assert_allclose(np.asarray(inputs[:, 4:20]), np.asarray(want), atol=1e-6)


def test_block_causal_mask_over_scales():
  mask = ns.block_causal_mask(ns.token_counts((1, 2)))
  assert mask.shape == (5, 5)
  np.testing.assert_array_equal(mask[0], [True, False, False, False, False])
  assert mask[1:, :].all()                        # scale 2 sees itself and scale 1
  np.testing.assert_array_equal(ns.scale_ids((1, 2, 4)), [0] + [1] * 4 + [2] * 16)
