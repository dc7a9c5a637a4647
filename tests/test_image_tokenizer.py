"""The image tokenizer (tokenlab/methods/image_tokenizer.py): code shapes and the code round
trip per quantizer, then one tiny EMA-VQ run on `digits` through `tokenlab train`, `eval`,
`sample` and the frozen loader (module-scoped: trained once)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab import cli, registry
from tokenlab.config import load_config
from tokenlab.evals.image import image_grid, psnr_per_image
from tokenlab.method import as_variables, init_variables

EXP = "experiments/image_tokenizer.py:size=tiny"


def _build(quantizer, arch="conv"):
  config = load_config(f"{EXP},data=photos,quantizer={quantizer},arch={arch}")
  return registry.build_method(config.model)


def test_code_shapes_and_bits_of_every_quantizer():
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  streams = {"rvq": 2}
  for quantizer in ("vq_ema", "vq", "rvq", "fsq", "lfq", "binary"):
    method = _build(quantizer)

    def codes_of(images, method=method):
      params, state = init_variables(method, jax.random.key(0), {"image": images})
      params = jax.tree.map(lambda b: getattr(b, "value", b), params,
                            is_leaf=lambda b: hasattr(b, "value"))
      return method.encode(as_variables(params, state), images)

    codes = jax.eval_shape(codes_of, images)
    assert codes.shape == (2, 4, 4) + ((streams[quantizer],) if quantizer in streams else ())
    assert codes.dtype == jnp.int32
    assert bool(method.state_collections) == (quantizer in ("vq_ema", "rvq"))
    assert method.bits_per_image((16, 16)) == 16 * method.bits_per_token


@pytest.mark.parametrize("quantizer,arch", [("rvq", "conv"), ("binary", "vit")])
def test_codes_round_trip_to_the_forward_reconstruction(quantizer, arch):
  method = _build(quantizer, arch)
  images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)

  @jax.jit
  def run(images):
    params, state = init_variables(method, jax.random.key(0), {"image": images})
    variables = as_variables(jax.tree.map(lambda b: getattr(b, "value", b), params,
                                          is_leaf=lambda b: hasattr(b, "value")), state)
    codes = method.encode(variables, images)
    return method.decode(variables, codes), method.reconstruct(variables, images)

  decoded, recon = run(images)
  assert decoded.shape == images.shape
  np.testing.assert_allclose(decoded, recon, atol=1e-6)
  assert 0.0 <= float(decoded.min()) and float(decoded.max()) <= 1.0


def test_psnr_and_grid():
  x = np.full((2, 4, 4, 1), 0.5, np.float32)
  y = x + np.array([0.0, 0.1], np.float32)[:, None, None, None]
  np.testing.assert_allclose(psnr_per_image(x, y), [100.0, 20.0], rtol=1e-5)
  grid = image_grid(np.stack([x, y]))              # (2 rows, 2 cols) of 4x4
  assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3) and grid.dtype == np.uint8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("itok")
  workdir = str(root / "run")
  args = ["--config", f"{EXP},data=digits", "--workdir", workdir,
          f"--config.data.data_dir={root / 'tfds'}", "--config.train.progress=false",
          "--config.train.steps=30", "--config.checkpoint.every_steps=15",
          "--config.checkpoint.keep=2", "--config.train.log_every=5"]
  assert cli.main(["train", *args]) == 0
  return workdir


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_training_lowers_reconstruction_error_and_moves_the_ema_codebook(trained):
  mse = [r["train/mse"] for r in _rows(trained) if "train/mse" in r]
  assert len(mse) == 6 and mse[-1] < 0.7 * mse[0], mse
  evals = [r for r in _rows(trained) if "eval/psnr" in r]
  assert evals[-1]["eval/bits_per_image"] == 4 * 5.0     # 2x2 codes of log2(32) bits
  from tokenlab.train.inference import load_trained
  batch = {"image": np.zeros((1, 8, 8, 1), np.float32), "label": np.zeros((1,), np.int32),
           "mask": np.ones((1,), np.float32)}
  stats = {s: jax.device_get(load_trained(trained, batch, s).model_state["vq_stats"])
           for s in (15, 30)}
  # The EMA codebook lives in the trainer's model state and keeps moving between checkpoints.
  moved = np.abs(stats[30]["quantizer"]["codebook"] - stats[15]["quantizer"]["codebook"])
  assert moved.max() > 1e-3
  assert not np.allclose(stats[30]["quantizer"]["cluster_size"], 1.0)


def test_eval_and_sample_through_the_cli(trained, capsys):
  assert cli.main(["eval", "--workdir", trained]) == 0
  out = capsys.readouterr().out
  assert "psnr=" in out and "bits_per_image=20.0000" in out
  png = os.path.join(trained, "grid.png")
  assert cli.main(["sample", "--workdir", trained, "--num", "3", "--out", png]) == 0
  assert png in capsys.readouterr().out
  from PIL import Image
  picture = np.asarray(Image.open(png))
  assert picture.shape[0] < picture.shape[1]                 # 2 rows (images, recons) x 3
  assert picture.ndim == 3 and picture.std() > 0


def test_frozen_tokenizer_decodes_what_the_run_reconstructs(trained):
  from tokenlab import data as data_lib
  from tokenlab.train.inference import load_config_from_workdir, load_frozen_tokenizer
  tok = load_frozen_tokenizer(trained)
  assert tok.step == 30
  config = load_config_from_workdir(trained)
  batch = next(iter(data_lib.make_iterator(config.data, split="validation", batch_size=8,
                                           seed=0, shuffle=False, num_epochs=1)))
  codes, images, recon = jax.jit(lambda x: (
      tok.encode(x), tok.decode(tok.encode(x)), tok.method.reconstruct(tok.variables, x)))(
          batch["image"])
  assert codes.shape == (8, 2, 2) and int(codes.max()) < 32
  np.testing.assert_allclose(images, recon, atol=1e-5)
  # A trained tokenizer beats the constant image at the data's mean.
  constant = np.full_like(batch["image"], batch["image"].mean())
  assert psnr_per_image(batch["image"], images).mean() > psnr_per_image(
      batch["image"], constant).mean()
