"""Video metrics (per-frame PSNR, the frame probe, the toy FVD), `tokenlab sample` for a video
method, and a video model under the sharded trainer with the batch and time axes split over
the 4 test devices (mesh data=2 x time=2)."""

import json
import os

import jax
import numpy as np
import pytest

from tokenlab.errors import ConfigError
from tokenlab.evals import video_metrics as vm


def test_per_frame_psnr_is_capped_for_exact_frames_and_drops_only_where_noise_is():
  rng = np.random.default_rng(0)
  video = rng.uniform(size=(2, 3, 4, 4, 1)).astype(np.float32)
  same = np.asarray(vm.per_frame_psnr(video, video))
  assert same.shape == (2, 3) and np.all(same == 100.0)
  noisy = video.copy()
  noisy[1, 2] = np.clip(noisy[1, 2] + rng.normal(0, 0.1, (4, 4, 1)), 0, 1)
  got = np.asarray(vm.per_frame_psnr(video, noisy))
  assert got[1, 2] < 30.0 and np.all(np.delete(got.ravel(), 5) == 100.0)
  # A constant error e gives exactly -20 log10(e) dB.
  np.testing.assert_allclose(vm.per_frame_psnr(np.zeros_like(video), video * 0 + 0.1),
                             np.full((2, 3), 20.0), rtol=1e-5)
  with pytest.raises(ValueError, match="B, T, H, W, C"):
    vm.per_frame_psnr(video[0], video[0])


def test_targets_of_labels():
  """Probe and classifier targets read from the labels as documented."""
  objects = np.full((1, 1, 3, 4), -1)
  objects[0, 0, 0] = [2, 5, 0, 0]       # a triangle, colour 5, box at (0, 0) of a 24 px frame
  objects[0, 0, 1] = [0, 1, 18, 12]     # a square, colour 1, box centre (21, 15): cell (3, 2)
  t = vm.frame_targets("moving_shapes", {"objects": objects}, {"size": 24})[0, 0]
  assert t.shape == (26,)
  assert list(np.flatnonzero(t[:4])) == [0, 2] and list(np.flatnonzero(t[4:10])) == [1, 5]
  assert list(np.flatnonzero(t[10:])) == [0, 3 * 4 + 2]
  labels = {"digits": np.array([[3, 7]]), "velocities": np.array([[[[1, -2], [-1, 3]]]])}
  c = vm.clip_targets("moving_digits", labels)[0]
  assert list(np.flatnonzero(c[:10])) == [3, 7] and list(np.flatnonzero(c[10:])) == [1, 2]


OPTIONS = {"size": 16, "num_frames": 4}


def _probe(cache_dir):
  return vm.train_frame_probe("pulse", options=OPTIONS, clips=24, steps=50, batch_size=32,
                              cache_dir=cache_dir)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
  cache_dir = str(tmp_path_factory.mktemp("probe"))
  return _probe(cache_dir), cache_dir


def test_probe_beats_chance_on_held_out_frames_and_is_cached(probe):
  """The probe reads the blob's radius on validation frames far better than the train mean
  does; a second call loads the same weights from the cache."""
  probe, cache_dir = probe
  assert not probe.from_cache
  assert probe.val_scores["radius_error_px"] < 0.5 * probe.chance["radius_error_px"]
  val = vm.load_clips("pulse", "validation", OPTIONS, 8)
  score = probe.score(val["video"], val)
  wrong = probe.score(val["video"], {"radius": val["radius"][::-1] + 1.0})
  assert score["radius_error_px"] < wrong["radius_error_px"]
  again = _probe(cache_dir)
  assert again.from_cache and again.val_scores == probe.val_scores
  jax.tree.map(np.testing.assert_array_equal, again.params, probe.params)


def test_toy_fvd_of_held_out_real_clips_is_below_noise():
  """On the video classifier's features (random weights here: training it is the probe's
  code path, `_train`, tested above; its accuracy is measured in BUILD_NOTES)."""
  net = vm.VideoClassifier(4, features=16)
  shapes = jax.eval_shape(net.init, jax.random.key(0), np.zeros((1, 4, 16, 16, 1), np.float32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                        shapes["params"])
  classifier = vm.VideoFeatures("classifier", "pulse", OPTIONS, 4, 16, (4, 16, 16, 1), params,
                                {}, {}, 0.0)
  train = vm.load_clips("pulse", "train", OPTIONS, 16)["video"]
  val = vm.load_clips("pulse", "validation", OPTIONS, 16)["video"]
  noise = np.random.default_rng(0).integers(0, 256, train.shape).astype(np.uint8)
  real = vm.toy_fvd(classifier, train, val)
  assert real < vm.toy_fvd(classifier, noise, val) and vm.toy_fvd(classifier, val, val) < 1e-6
  scores = vm.evaluate_videos(train, classifier=classifier, reference=val)
  assert scores["fvd"] == pytest.approx(real) and "fvd_real" in scores


# ------------------------------------------------------- sharded trainer and `tokenlab sample`


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
  """The tiny video tokenizer (pulse, 4 frames of 16x16, one space-time block) trained 2 steps
  by the real trainer on the mesh data=2 x time=2 (`set_time_sharding`)."""
  from tokenlab.config import load_config, set_time_sharding
  from tokenlab.train.loop import train
  root = tmp_path_factory.mktemp("vshard")
  config = load_config("experiments/video_tokenizer.py:size=tiny,dataset=pulse", [
      f"--config.data.data_dir={root / 'tfds'}", "--config.train.progress=false",
      "--config.train.steps=2", "--config.train.log_every=1", "--config.model.num_layers=0",
      "--config.model.quantizer=fsq", "--config.checkpoint.async_save=false"])
  set_time_sharding(config, 2)
  train(config, str(root / "run"))
  return config, str(root / "run")


def _clips(n):
  """n validation clips of the run's data as a batch (generated in memory, no pipeline)."""
  val = vm.load_clips("pulse", "validation", OPTIONS, n)
  return {"video": val["video"].astype(np.float32) / 255.0, "signal": val["signal"],
          "mask": np.ones((n,), np.float32)}


def test_the_trainer_splits_video_batches_over_batch_and_time(sharded_run):
  """2 steps ran on 4 devices; the trainer's batch shardings split `video` (B, T, ...) over
  data (clips) and time (frames), the other fields over data only."""
  from jax.sharding import PartitionSpec as P
  from tokenlab.train import partitioning
  from tokenlab.train.mesh import make_mesh
  config, workdir = sharded_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["info/devices"] for r in rows if "info/devices" in r] == [4]
  assert [r["step"] for r in rows if np.isfinite(r.get("train/loss", np.nan))] == [1, 2]
  mesh = make_mesh(config.mesh, dcn_cfg=config.mesh_dcn)
  rules = partitioning.rules_from_config(config.sharding_rules)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 1, "time": 2}
  batch = _clips(4)
  shardings = partitioning.batch_shardings(mesh, rules, {k: v.shape for k, v in batch.items()})
  assert shardings["video"].spec == P(("data", "fsdp"), "time", None, None, None)
  assert shardings["signal"].spec == P(("data", "fsdp"), None)      # only `video` has names
  shards = jax.device_put(batch["video"], shardings["video"]).addressable_shards
  assert len({s.device for s in shards}) == 4
  assert {s.data.shape for s in shards} == {(2, 2, 16, 16, 1)}      # half the clips, frames
  assert {(s.index[0].start or 0, s.index[1].start or 0) for s in shards} == {
      (0, 0), (0, 2), (2, 0), (2, 2)}
  with pytest.raises(ConfigError, match="time"):                    # 3 frames over 2 devices
    partitioning.batch_shardings(mesh, rules, {"video": (4, 3, 16, 16, 1)})


def test_loss_of_a_time_sharded_batch_equals_the_one_device_loss(sharded_run):
  """A one-block tokenizer (spatial and temporal attention; its tokens constrained to
  ('batch', 'length', 'embed') with length -> time) on the batch split over data x time
  gives the loss of the same parameters and batch on one device."""
  import flax.linen as nn
  from ml_collections import ConfigDict
  from tokenlab import registry
  from tokenlab.method import random_params
  from tokenlab.train import partitioning
  from tokenlab.train.mesh import make_mesh
  config, _ = sharded_run
  mesh = make_mesh(config.mesh, dcn_cfg=config.mesh_dcn)
  rules = partitioning.rules_from_config(config.sharding_rules)
  method = registry.build_method(ConfigDict(dict(config.model.to_dict(), num_layers=1,
                                                 quantizer="fsq")))
  batch = _clips(4)
  params = random_params(method, batch, scale=0.3)
  shardings = partitioning.batch_shardings(mesh, rules, {k: v.shape for k, v in batch.items()})
  placed = {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
  loss_fn = jax.jit(lambda p, b: method.loss(p, b, jax.random.key(0))[0])
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    sharded = loss_fn(params, placed)
  single = loss_fn(params, batch)                                   # one device, no rules
  assert len(sharded.sharding.device_set) == 4 and len(single.devices()) == 1
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5)


def test_tokenlab_sample_writes_clips_above_reconstructions_as_a_gif(sharded_run, capsys):
  """(The PNG strip, --out x.png, is `evals.video.save_video_strip`, tested with the data.)"""
  from PIL import Image
  from tokenlab import cli
  _, workdir = sharded_run
  gif = os.path.join(workdir, "clips.gif")
  assert cli.main(["sample", "--workdir", workdir, "--num", "2", "--out", gif]) == 0
  assert gif in capsys.readouterr().out
  with Image.open(gif) as picture:
    assert picture.n_frames == 4                                    # one GIF frame per frame
    first = np.asarray(picture.convert("RGB"))
    picture.seek(3)
    last = np.asarray(picture.convert("RGB"))
  # 4 rows (clip 0, its reconstruction, clip 1, its reconstruction) of 16 px frames shown x4
  assert first.shape == ((4 * 17 + 1) * 4, 18 * 4, 3) and not np.array_equal(first, last)
  assert cli.main(["sample", "--workdir", workdir, "--out",
                   os.path.join(workdir, "x.mp4")]) != 0
  assert "--out x.gif" in capsys.readouterr().err
