"""TV2TV (tokenlab/methods/tv2tv.py) and Mixture-of-Transformers routing
(tokenlab/nn/mixture_of_transformers.py): the interleaved block-causal mask, per-modality
weights, the layout, the narration, no look-ahead, the instruction test's scoring, the quick
repro."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.data import moving_shapes
from tokenlab.errors import ConfigError
from tokenlab.method import random_params
from tokenlab.methods.tv2tv import (BOV, CLEAN, NOISY, PAD, SLOT, WORD, TV2TV, TV2TVConfig,
                                    make_layout, narration, words)
from tokenlab.nn.mixture_of_transformers import MoTStack, interleaved_mask, route

_KEY = jax.random.key(0, impl="unsafe_rbg")
_OPTS = {"size": 24, "num_frames": 5, "num_events": 2, "seed": 0}


def test_interleaved_mask_is_block_causal():
  # text t0, video chunk (2 tokens), noisy copy (hidden), text t1, pad (hidden)
  blocks = np.array([0, 1, 1, 2, 3, 4])
  visible = np.array([1, 1, 1, 0, 1, 0], bool)
  m = np.asarray(interleaved_mask(blocks, visible))[0, 0]
  want = np.array([[1, 0, 0, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0],
                   [1, 1, 1, 1, 0, 0],
                   [1, 1, 1, 0, 1, 0],
                   [1, 1, 1, 0, 1, 1]], bool)
  np.testing.assert_array_equal(m, want)
  # Never the future: on random layouts no query sees a later block.
  rng = np.random.default_rng(0)
  for _ in range(5):
    ids = np.sort(rng.integers(0, 6, 12))
    vis = rng.random(12) < 0.7
    mm = np.asarray(interleaved_mask(ids[None], vis[None]))[0, 0]
    assert not (mm & (ids[None, :] > ids[:, None])).any()
    assert (mm[ids[:, None] == ids[None, :]]).all()                 # own block always


def test_route_static_layout_equals_per_token_selection():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 3)), jnp.float32)
  fns = [lambda v: v * 2.0, lambda v: v - 1.0]
  layout = np.array([0, 1, 1, 0, 1])
  a, b = jax.jit(lambda x: (route(layout, fns, x),
                            route(jnp.broadcast_to(jnp.asarray(layout), (2, 5)), fns, x)))(x)
  np.testing.assert_allclose(a, b)
  np.testing.assert_allclose(a[:, 0], 2.0 * x[:, 0])
  np.testing.assert_allclose(a[:, 1], x[:, 1] - 1.0)


def _random(shapes, seed=0, scale=0.3):
  """Random float32 values for a tree of shapes (no init program to compile)."""
  rng = np.random.default_rng(seed)
  unbox = jax.tree.map(lambda b: getattr(b, "value", b), shapes,
                       is_leaf=lambda b: hasattr(b, "value"))
  return jax.tree.map(lambda a: (rng.normal(size=a.shape) * scale).astype(np.float32), unbox)


@pytest.fixture(scope="module")
def mot():
  """A 1-layer MoT over [video x3 | text x2 | video x2] (blocks: chunk, t, t, chunk), with
  params and one jitted apply."""
  stack = MoTStack(("text", "video"), num_layers=1, num_heads=2, head_dim=4, mlp_dim=8)
  layout = np.array([1, 1, 1, 0, 0, 1, 1])
  mask = interleaved_mask(np.array([0, 0, 0, 1, 2, 3, 3]))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, 8)), jnp.float32)
  params = _random(jax.eval_shape(lambda k: stack.init(k, x, layout, mask), _KEY)["params"])
  apply = jax.jit(lambda p, x: stack.apply({"params": p}, x, layout, mask))
  return params, apply, x


def _perturb(params, prefix):
  """Every parameter whose module name starts with `prefix` shifted by 0.5."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  def shift(path, v):
    names = [str(getattr(k, "key", k)) for k in path]
    return v + 0.5 if any(n.startswith(prefix) for n in names) else v
  leaves = [shift(p, getattr(v, "value", v)) for p, v in flat]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


def test_mot_tokens_go_only_through_their_modality_weights(mot):
  params, apply, x = mot
  base = np.asarray(apply(params, x))
  text_changed = np.asarray(apply(_perturb(params, "text_"), x))
  video_changed = np.asarray(apply(_perturb(params, "video_"), x))
  # Video tokens before any text: untouched by the text weights.
  np.testing.assert_allclose(text_changed[:, :3], base[:, :3], rtol=1e-6, atol=1e-6)
  # Text weights move the text tokens and, through attention, the video after them.
  assert np.abs(text_changed[:, 3:5] - base[:, 3:5]).max(-1).min() > 1e-3
  assert np.abs(text_changed[:, 5:] - base[:, 5:]).max() > 1e-3
  # Video weights move every video token.
  assert np.abs(video_changed[:, :3] - base[:, :3]).max(-1).min() > 1e-3
  # Each modality has its own norms, projections and MLP.
  layer = params["layer_0"]
  for name in ("attn_norm", "query", "key", "value", "out", "mlp_norm", "mlp"):
    assert f"text_{name}" in layer and f"video_{name}" in layer


def test_layout_blocks_positions_and_predictors():
  lay = make_layout(num_frames=5, frames_per_chunk=1, patches=4)
  # frame 0 + 4 slots + 4 noisy frames + 3 clean frames
  assert lay.length == 4 + 4 * SLOT + 4 * 4 + 3 * 4
  mask = np.asarray(interleaved_mask(lay.block, lay.kind != NOISY))[0, 0]
  noisy = lay.kind == NOISY
  # Nothing outside a noisy chunk reads it; a noisy chunk reads only earlier clean frames
  # and text, and itself.
  assert not mask[:, noisy][lay.chunk[:, None] != lay.chunk[None, noisy]].any()
  for c in range(1, 5):
    rows = np.flatnonzero(noisy & (lay.chunk == c))
    seen = np.flatnonzero(mask[rows].any(0))
    frames = set(lay.frame[seen][lay.kind[seen] == CLEAN])
    assert frames == set(range(c))                        # the past frames, never frame c
    assert set(lay.chunk[seen][lay.kind[seen] == WORD]) == set(range(1, c + 1))
    # The noisy copy sits at its clean twin's positions.
    if c < 4:
      twin = np.flatnonzero((lay.kind == CLEAN) & (lay.chunk == c))
      np.testing.assert_array_equal(lay.position[rows], lay.position[twin])
  # Text is causal; slot j is predicted by token j - 1, slot start by the chunk before it.
  np.testing.assert_array_equal(lay.predictor[:, 1:], lay.words[:, :-1])
  for c in range(4):
    assert lay.kind[lay.predictor[c, 0]] == CLEAN and lay.chunk[lay.predictor[c, 0]] == c
    assert lay.predictor[c, 0] == lay.words[c, 0] - 1
  assert (np.diff(lay.block) >= 0).all()


def test_narration_follows_the_captions():
  labels = [moving_shapes.clip_labels("train", i, _OPTS) for i in range(12)]
  events = jnp.asarray(np.stack([l["events"] for l in labels]).astype(np.int32))
  both = jax.jit(lambda e: (narration(e, 4, 1), narration(e, 4, 1, text=False)))
  slots, silent = map(np.asarray, both(events))
  for l, s in zip(labels, slots):
    phrases = [p.replace(" becomes a ", " becomes ").split(" ", 1)[1]
               for p in l["caption"].split(", then ")]
    assert words(s[0]) == phrases[0] + " <bov>" and words(s[2]) == phrases[1] + " <bov>"
    assert words(s[1]) == words(s[3]) == "<bov>"          # nothing new starts: switch at once
  assert (silent[..., 0] == BOV).all() and (silent[..., 1:] == PAD).all()


def test_config_errors():
  with pytest.raises(ConfigError, match="frames_per_chunk"):
    TV2TV(TV2TVConfig(num_frames=5, frames_per_chunk=3))
  with pytest.raises(ConfigError, match="two events start in one chunk"):
    TV2TV(TV2TVConfig(num_frames=5, num_events=2, frames_per_chunk=4))


@pytest.fixture(scope="module")
def tiny():
  """The size=tiny model (3 frames, 12 px patches), random params, one jitted apply."""
  cfg = TV2TVConfig(num_frames=3, patch_size=12, d_model=16, num_layers=1, num_heads=2,
                    mlp_dim=16, head_width=16, head_depth=1)
  m = TV2TV(cfg)
  labels = [moving_shapes.clip_labels("train", i, {**_OPTS, "num_frames": 3}) for i in range(2)]
  video = np.stack([moving_shapes.render(l["objects"], 24) for l in labels]) / 255.0
  batch = {"video": jnp.asarray(video, jnp.float32),
           "events": jnp.asarray(np.stack([l["events"] for l in labels]), jnp.int32)}
  # Random weights (FlowHead is zero at init: velocities must depend on the inputs).
  params = random_params(m, batch, scale=0.1)
  return m, params, batch, jax.jit(m.apply)


def test_no_look_ahead_into_future_frames(tiny):
  """Slot c's logits and chunk c's velocity do not change when frames >= chunk c change."""
  m, params, batch, apply = tiny
  frames = m.frame_patches(batch["video"])
  slots = m.slots(batch)
  noisy = jnp.asarray(np.random.default_rng(3).normal(size=(2, 2, 4, m.patch_dim)),
                      jnp.float32)
  t = jnp.full((2, 2), 0.3)
  logits, v = apply(params, frames, slots, noisy, t)
  other = frames.at[:, 1:].set(1.0 - frames[:, 1:])
  logits2, v2 = apply(params, other, slots, noisy, t)
  np.testing.assert_allclose(logits2[:, 0], logits[:, 0], atol=1e-5)   # slot 1: frame 0 only
  np.testing.assert_allclose(v2[:, 0], v[:, 0], atol=1e-5)             # chunk 1: frame 0 only
  assert np.abs(np.asarray(v2[:, 1] - v[:, 1])).max() > 1e-4           # chunk 2 reads frame 1
  # A noisy chunk is read by nobody else: changing chunk 1's x_t leaves slot 2 and chunk 2.
  logits3, v3 = apply(params, frames, slots, noisy.at[:, 0].set(0.0), t)
  np.testing.assert_allclose(logits3[:, 1], logits[:, 1], atol=1e-5)
  np.testing.assert_allclose(v3[:, 1], v[:, 1], atol=1e-5)
  # The no-text arm has the same parameters (same layout and compute), text in BOV only.
  silent = TV2TV(TV2TVConfig(**{**m.config.__dict__, "text": False}))
  assert (np.asarray(silent.slots(batch))[..., 1:] == PAD).all()
  shape = lambda method: jax.tree.map(lambda a: a.shape, jax.eval_shape(method.init, _KEY, batch))
  assert shape(silent) == shape(m)


def test_instruction_scoring_recognises_a_perfect_continuation():
  """The inserted instructions differ from the true event, are valid, and a clip that plays
  one is scored as followed; the true clip is not."""
  from tokenlab.repro.tv2tv import follow_scores, interventions, make_clips, scene_state
  clips = make_clips("validation", 6, _OPTS)
  rows, chance = interventions(clips, 24, 5, 3)
  assert (rows[:, 4] == 3).all() and ((0 < chance) & (chance < 0.2)).all()
  assert not (rows == clips["events"][:, 1]).all(-1).any()
  played = []
  for i, row in enumerate(rows):
    state, states = scene_state(clips["objects"][i], 2), None
    for attempt in range(50):   # appears: placements are random, draw until one fits
      for ev in moving_shapes._candidates(np.random.default_rng((i, attempt)), state, 24):
        before = ev[3] if ev[0] == moving_shapes.APPEARS else state[ev[1]]
        if [ev[0], before[0], before[1], ev[2]] == row[:4].tolist():
          states = moving_shapes._run(state, ev, range(3, 5), 24)
          if states is not None:
            break
      if states is not None:
        break
    table = np.concatenate([clips["objects"][i][:3],
                            moving_shapes._table(states, clips["objects"].shape[2])])
    played.append(moving_shapes.render(table, 24) / 255.0)
  followed, kind = follow_scores(np.stack(played), clips["events"][:, 0], rows)
  assert followed == kind == 1.0
  assert follow_scores(clips["video"], clips["events"][:, 0], rows)[0] == 0.0


def test_repro_quick(tmp_path):
  """The quick reproduction: the tv2tv arm, 2 steps of the tiny model, scored against the
  copy-last-frame and chance baselines, the strip written; it claims nothing."""
  from tokenlab import repro
  report = repro.run("tv2tv", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  values = {(a, m): v for a, m, v, _, _ in report.rows}
  from tokenlab.repro.tv2tv import CHANCE, COPY, FOLLOW, SEG
  assert 0 < values[(CHANCE, FOLLOW)] < 0.2
  assert values[(COPY, SEG)] > 10.0
  assert np.isfinite(values[("tv2tv", SEG)])
  assert os.path.isfile(tmp_path / "tv2tv.png")
