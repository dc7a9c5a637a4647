"""The 3-D video blocks (tokenlab/nn/video.py) and the video tokenizer
(tokenlab/methods/video_tokenizer.py): tubelet round trip, 3-D positions, the factorised
space-time block's invariants (causal time never looks ahead, spatial attention never mixes
frames, temporal attention never mixes positions), code shapes per quantizer, config errors,
and one tiny 3-step run through `tokenlab train` (module-scoped: trained once) that the
frozen loader, the code round trip and the masking tests reuse."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from tokenlab import cli, registry
from tokenlab.config import load_config
from tokenlab.errors import ConfigError
from tokenlab.method import as_variables, init_variables
from tokenlab.nn.video import (SpaceTimeTransformer, patchify_3d, sincos_3d, unpatchify_3d,
                               video_grid)
from tokenlab.train.inference import load_frozen_tokenizer

EXP = "experiments/video_tokenizer.py:size=tiny"


def test_patchify_3d_is_an_exact_inverse_in_raster_order():
  video = np.random.default_rng(0).random((2, 4, 6, 4, 3)).astype(np.float32)
  tokens = patchify_3d(video, 2, 2)
  assert tokens.shape == (2, 2 * 3 * 2, 2 * 2 * 2 * 3)
  assert video_grid(video.shape, 2, 2) == (2, 3, 2)
  np.testing.assert_array_equal(unpatchify_3d(tokens, 2, 2, 4, 6, 4), video)
  # Token (t=1, y=2, x=0) holds frames 2-3, rows 4-5, columns 0-1; its vector is ordered
  # (frame in tubelet, row, column, channel).
  np.testing.assert_array_equal(tokens[1, 1 * 6 + 2 * 2 + 0],
                                video[1, 2:4, 4:6, 0:2].reshape(-1))
  with pytest.raises(ValueError, match="tubelet"):
    patchify_3d(video, 3, 2)


def test_sincos_3d_frame_part_and_grid_part():
  emb = np.asarray(jax.jit(sincos_3d, static_argnums=(0, 1, 2, 3))(3, 2, 2, 12))
  emb = emb.reshape(3, 4, 12)
  # 12 channels: 8 (a multiple of 4 <= 2/3 of 12) for (row, col), 4 for the latent frame.
  np.testing.assert_array_equal(emb[:, :1, :4], emb[:, 1:2, :4])   # frame part: same per frame
  np.testing.assert_array_equal(emb[0, :, 4:], emb[2, :, 4:])       # grid part: same per (y, x)
  assert len({tuple(r) for r in emb.reshape(12, 12).round(6)}) == 12


GRID = (3, 2, 2)


@pytest.fixture(scope="module")
def perturbed_outputs():
  """A space-time block's outputs on x, on x with latent frame 1 changed and on x with one
  token changed: causal and full temporal attention (same parameters), and with the temporal
  (or spatial) attention's output projection zeroed."""
  x = np.random.default_rng(0).normal(size=(3, 12, 8)).astype(np.float32)
  x[1] = x[0]
  x[1, 4:8] += 1.0                   # latent frame 1 = tokens 4..7
  x[2] = x[0]
  x[2, 5] += 1.0                     # one token: frame 1, position 1

  net = lambda causal: SpaceTimeTransformer(GRID, num_layers=1, num_heads=2, head_dim=4,
                                            mlp_dim=16, causal_time=causal)
  # Parameters drawn in numpy on eval_shape's tree: no random-init program to compile.
  shapes = nn.meta.unbox(jax.eval_shape(net(True).init, jax.random.key(0), x))
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)

  @jax.jit
  def run(params, x):
    out = {"causal": net(True).apply(params, x), "full": net(False).apply(params, x)}
    for path in ("time_attn", "space_attn"):
      cut = jax.tree_util.tree_map_with_path(
          lambda p, v, path=path: jnp.zeros_like(v) if path in jax.tree_util.keystr(p)
          and "out" in jax.tree_util.keystr(p) else v, params)
      out[path] = net(False).apply(cut, x)
    return out

  return {k: v.reshape(3, 3, 4, 8) for k, v in jax.device_get(run(params, x)).items()}


def test_causal_temporal_attention_never_looks_ahead(perturbed_outputs):
  base, changed = perturbed_outputs["causal"][:2]
  np.testing.assert_allclose(changed[0], base[0], atol=1e-6)      # frame 0 does not see 1
  assert np.abs(changed[1:] - base[1:]).min(axis=-1).max() > 1e-3   # frames 1, 2 do
  base, changed = perturbed_outputs["full"][:2]
  assert np.abs(changed[0] - base[0]).max() > 1e-3                 # non-causal: it does


def test_spatial_attention_never_mixes_frames_and_temporal_never_mixes_positions(
    perturbed_outputs):
  # Temporal attention cut: spatial attention + MLP only; a change in frame 1 stays there.
  base, frame, token = perturbed_outputs["time_attn"]
  np.testing.assert_allclose(frame[[0, 2]], base[[0, 2]], atol=1e-6)
  assert np.abs(token[1] - base[1]).max(axis=-1).min() > 1e-4      # ... spread in frame 1
  # Spatial attention cut: temporal + MLP only; a change at position 1 stays at position 1.
  base, _, token = perturbed_outputs["space_attn"]
  np.testing.assert_allclose(token[:, [0, 2, 3]], base[:, [0, 2, 3]], atol=1e-6)
  assert np.abs(token[:, 1] - base[:, 1]).max(axis=-1).min() > 1e-4  # ... in every frame


def _build(arg="", overrides=()):
  return registry.build_method(load_config(f"{EXP},dataset=moving_digits{arg}",
                                           overrides).model)


def test_code_shapes_and_bits_of_every_quantizer():
  video = jax.ShapeDtypeStruct((2, 4, 32, 32, 1), jnp.float32)
  for quantizer in ("vq_ema", "vq", "rvq", "fsq", "lfq", "binary"):
    # Without space-time blocks: the codes' shapes come from the grid and the quantizer.
    method = _build(f",quantizer={quantizer}", ["model.num_layers=0"])

    def codes_of(video, method=method):
      params, state = init_variables(method, jax.random.key(0), {"video": video})
      params = jax.tree.map(lambda b: getattr(b, "value", b), params,
                            is_leaf=lambda b: hasattr(b, "value"))
      variables = as_variables(params, state)
      codes = method.encode(variables, video)
      return codes, method.decode(variables, codes)

    codes, decoded = jax.eval_shape(codes_of, video)
    assert method.grid == (2, 4, 4)
    assert codes.shape == (2, 2, 4, 4) + ((2,) if quantizer == "rvq" else ())
    assert codes.dtype == jnp.int32 and decoded.shape == video.shape
    assert bool(method.state_collections) == (quantizer in ("vq_ema", "rvq"))
    assert method.bits_per_clip == 32 * method.bits_per_token


@pytest.mark.parametrize("arg,match", [
    (",frames=3", "frames=3 does not split into tubelets"),
    (",quantizer=kmeans", "quantizer='kmeans'"),
    (",mask_kind=cube", "mask_kind='cube'"),
    ("", "needs a video dataset"),
])
def test_a_bad_config_gives_one_config_error(arg, match):
  with pytest.raises(ConfigError, match=match):
    method = _build(arg)
    method.init(jax.random.key(0), {"image": np.zeros((1, 32, 32, 1), np.float32)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """3 steps of the tiny tokenizer on pulse (4 frames of 16x16) through `tokenlab train`.
  Without space-time blocks (num_layers=0: tubelet embedding, VQ, linear head): they would
  double the file's compile time and are tested directly above; this run tests the method
  under the trainer (EMA state, checkpoint, eval, the frozen loader)."""
  root = tmp_path_factory.mktemp("vtok")
  workdir = str(root / "run")
  args = ["--config", f"{EXP},dataset=pulse", "--workdir", workdir,
          f"--config.data.data_dir={root / 'tfds'}", "--config.train.progress=false",
          "--config.train.steps=3", "--config.train.log_every=1", "--config.model.num_layers=0",
          "--config.checkpoint.async_save=false"]
  assert cli.main(["train", *args]) == 0
  return workdir


def test_three_steps_through_the_trainer_log_video_metrics(trained):
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if "train/mse" in r] == [1, 2, 3]
  final = [r for r in rows if "eval/psnr" in r][-1]
  assert final["eval/bits_per_clip"] == 2 * 2 * 2 * 4.0          # 8 codes of log2(16) bits
  assert 0.0 < final["eval/usage"] <= 1.0 and final["eval/psnr"] > 0.0


@pytest.fixture(scope="module")
def frozen_outputs(trained):
  tok = load_frozen_tokenizer(trained)
  video = np.random.default_rng(0).random((2, 4, 16, 16, 1)).astype(np.float32)
  model = tok.config.model.to_dict()
  masked = registry.build_method(ConfigDict(dict(model, frame_mask_ratio=0.5)))
  patched = registry.build_method(ConfigDict(dict(model, frame_mask_ratio=0.25,
                                                  mask_kind="patch")))
  normed = registry.build_method(ConfigDict(dict(model, token_norm=True)))
  ones = {"scale": np.ones((model["d_model"],), np.float32)}
  normed_variables = dict(tok.variables, params=dict(tok.variables["params"],
                                                     embed_norm=ones, latent_norm=ones))

  @jax.jit
  def run(video):
    codes = tok.encode(video)
    frames = masked.token_mask(jax.random.key(1), 2)
    tokens = masked.module.apply(tok.variables, video, frames,
                                 method=masked.module.embed_tokens)
    return dict(codes=codes, decoded=tok.decode(codes),
                recon=tok.method.reconstruct(tok.variables, video), frames=frames,
                tokens=tokens, patches=patched.token_mask(jax.random.key(1), 2),
                normed=normed.module.apply(normed_variables, video,
                                           method=normed.module.embed_tokens))

  return tok, jax.device_get(run(video))


def test_frozen_tokenizer_decodes_what_the_run_reconstructs(frozen_outputs):
  tok, out = frozen_outputs
  assert tok.step == 3 and tok.method.grid == (2, 2, 2)
  assert out["codes"].shape == (2, 2, 2, 2) and out["codes"].dtype == np.int32
  assert 0 <= out["codes"].min() and out["codes"].max() < tok.method.codebook_size
  assert out["decoded"].shape == (2, 4, 16, 16, 1)
  np.testing.assert_allclose(out["decoded"], out["recon"], atol=1e-5)


def test_frame_masking_replaces_whole_frames_by_the_mask_embedding(frozen_outputs):
  tok, out = frozen_outputs
  frames = out["frames"]                                           # (B, t, h, w)
  assert frames.shape == (2, 2, 2, 2)
  per_frame = frames.reshape(2, 2, 4)
  assert (per_frame.all(-1) | ~per_frame.any(-1)).all()            # whole latent frames
  assert (per_frame.all(-1).sum(-1) == 1).all()                    # round(0.5 * 2) per clip
  embedding = tok.variables["params"]["mask_embedding"]
  tokens = out["tokens"].reshape(2, 2, 4, -1)
  is_mask = np.isclose(tokens, embedding).all(-1)
  np.testing.assert_array_equal(is_mask, per_frame)
  # Patch kind: the same share of single tubelet positions, not whole frames.
  patches = out["patches"].reshape(2, 8)
  assert (patches.sum(-1) == 2).all()                              # round(0.25 * 8)


def test_token_norm_gives_unit_rms_embeddings(frozen_outputs):
  _, out = frozen_outputs
  rms = np.sqrt(np.mean(np.square(out["normed"]), axis=-1))
  np.testing.assert_allclose(rms, 1.0, rtol=1e-3)
  assert not np.allclose(np.sqrt(np.mean(np.square(out["tokens"]), axis=-1)), 1.0, rtol=0.1)
