"""Speech SSL units (tokenlab/methods/speech_ssl.py) and k-means (tokenlab/nn/kmeans.py):
k-means invariants, span masking, config errors, then one 3-step run on a tiny `speech`
build through `tokenlab train` (module-scoped: trained once), padding that never counts,
units fitted and bound by load_frozen_tokenizer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab import cli, registry
from tokenlab.config import load_config
from tokenlab.errors import ConfigError, TokenlabError
from tokenlab.methods.speech_ssl import span_mask
from tokenlab.nn import kmeans as km

EXP = "experiments/speech_ssl.py:size=tiny"


def test_kmeans_recovers_separated_clusters_and_inertia_never_increases():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(5, 3)) * 10
  labels = rng.integers(0, 5, 300)
  x = (centres[labels] + rng.normal(size=(300, 3)) * 0.3).astype(np.float32)
  # Far-away points of weight 0 must not pull a centroid (padding).
  x_pad = np.concatenate([x, np.full((20, 3), 1e3, np.float32)])
  w = np.concatenate([np.ones(300), np.zeros(20)]).astype(np.float32)

  # Structureless data too (same shape, one program): Lloyd steps have work after seeding.
  uniform = np.concatenate([rng.random((300, 3)), np.zeros((20, 3))]).astype(np.float32)

  @jax.jit
  def run(key):
    fits = jax.vmap(lambda d: km.kmeans(key, d, 5, 6, weights=w))(jnp.stack([x_pad, uniform]))
    return fits, km.assign(x, fits.centroids[0])

  fits, ids = run(jax.random.key(1))
  # The inertia after seeding, then after each Lloyd step, never increases.
  for h in np.asarray(fits.inertia):
    assert np.all(np.diff(h) <= 1e-5 * h[:-1]), h
  assert fits.inertia[1, -1] < 0.9 * fits.inertia[1, 0]
  # Each true cluster maps to one unit and the units are distinct: recovered exactly.
  assert all(len(set(ids[labels == c].tolist())) == 1 for c in range(5))
  assert len(set(np.asarray(ids).tolist())) == 5
  assert float(np.abs(fits.centroids[0]).max()) < 100   # no centroid at the padding


def test_span_mask_masks_whole_spans_of_valid_frames_only():
  valid = np.arange(200)[None, :] < np.array([[200], [120], [3], [0]])
  masked = np.asarray(jax.jit(lambda k: span_mask(k, jnp.asarray(valid), 0.08, 5))(
      jax.random.key(0)))
  assert not (masked & ~valid).any()
  assert masked[:3].any(axis=1).all() and not masked[3].any()   # >= 1 span per utterance
  # Runs of masked frames are at least a span long unless the valid frames end first.
  for row, n in zip(masked[:2], (200, 120)):
    edges = np.diff(np.concatenate([[0], row[:n].astype(int), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    assert all(e - s >= 5 or e == n for s, e in zip(starts, ends))
  # HuBERT's masked share: 1 - (1 - p)^span = 0.34 for p = 0.08, span = 5.
  assert 0.2 < masked[0].mean() < 0.5


def test_purity():
  from tokenlab.methods.speech_ssl import purity
  labels = np.array([1, 1, 2, 2, 3])
  assert purity(np.array([0, 0, 1, 1, 2]), labels) == 1.0
  assert purity(np.zeros(5, int), labels) == 0.4          # one cluster: the majority share


def test_config_errors_name_the_fix():
  with pytest.raises(ConfigError, match="unit_layer"):
    registry.build_method(load_config(EXP, ["--config.model.unit_layer=3"]).model)
  with pytest.raises(ConfigError, match="units"):
    load_config(EXP + ",units=64")
  method = registry.build_method(load_config(EXP).model)
  with pytest.raises(ConfigError, match="audio dataset"):
    method.init(jax.random.key(0), {"inputs": jnp.zeros((1, 8), jnp.int32)})
  assert method.bits_per_second(256) == 25 * 8 and method.frame_rate_hz == 25


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("sssl")
  workdir = str(root / "run")
  args = ["--config", EXP, "--workdir", workdir, f"--config.data.data_dir={root / 'tfds'}",
          "--config.train.progress=false", "--config.train.log_every=1",
          "--config.checkpoint.async_save=false"]
  assert cli.main(["train", *args]) == 0
  return workdir


def test_training_padding_units_and_the_frozen_loader(trained):
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train = [r for r in rows if "train/loss" in r]
  assert len(train) == 3 and all(np.isfinite(r["train/loss"]) for r in train)
  final = [r for r in rows if "eval/masked_accuracy" in r][-1]
  assert 0 < final["eval/mask_fraction"] < 1 and 0 < final["eval/target_usage"] <= 1

  from tokenlab import data as data_lib
  from tokenlab.methods import speech_ssl
  from tokenlab.nn.quantizers import STATS
  from tokenlab.train.inference import load_frozen_tokenizer
  out = speech_ssl.fit_units(trained, 8, iters=5)
  assert out["k"] == 8 and os.path.exists(out["path"])
  assert out["inertia"][-1] <= out["inertia"][0]
  tok = load_frozen_tokenizer(trained, units=8)
  with pytest.raises(TokenlabError, match="fit them"):    # k=5 was never fitted
    tok.method.frozen_variables(trained, tok.variables, units=5)
  batch = next(iter(data_lib.make_iterator(tok.config.data, split="validation", batch_size=2,
                                           seed=0, shuffle=False, num_epochs=1)))
  batch = {k: batch[k] for k in ("mel", "mel_lengths", "mask")}
  units = jax.jit(tok.encode)(batch)
  assert units.shape == (2, -(-batch["mel"].shape[1] // 4)) and units.dtype == jnp.int32
  assert 0 <= int(units.min()) and int(units.max()) < 8
  with pytest.raises(TokenlabError, match="no decoder"):
    tok.decode(units)

  # Padding never counts: frames past an utterance's end (beyond the convolutions' reach)
  # change neither the loss nor the target k-means update; a valid frame does.
  state = {STATS: tok.variables[STATS]}
  loss = jax.jit(lambda b: tok.method.loss(tok.variables["params"], b, jax.random.key(0),
                                           state))
  lengths = batch["mel_lengths"].copy()
  lengths[:] = 60
  base = dict(batch, mel_lengths=lengths)
  pad, real = batch["mel"].copy(), batch["mel"].copy()
  pad[:, 100:] += 3.0
  real[:, 10] += 3.0
  (l0, _, s0), (l1, _, s1), (l2, _, _) = (loss(dict(base, mel=m)) for m in
                                           (batch["mel"], pad, real))
  assert float(l0) == float(l1) and float(l0) != float(l2)
  for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)):
    np.testing.assert_array_equal(a, b)
