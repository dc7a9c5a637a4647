"""The procedural video datasets (moving_digits, moving_shapes, pulse): exact contents,
deterministic builds, disjoint splits, video batches through the pipeline, option errors."""

import numpy as np
import pytest
from PIL import Image

from tokenlab import data
from tokenlab.data import cli as data_cli
from tokenlab.data import mnist, moving_digits, pulse, sources
from tokenlab.data import moving_shapes as ms
from tokenlab.errors import ConfigError
from tokenlab.evals import video as video_evals

TINY = {"size": 32, "num_frames": 8, "num_train": 24, "num_validation": 8}
OPTIONS = {"moving_digits": TINY, "moving_shapes": dict(TINY, num_train=32, num_validation=16),
           "pulse": TINY}


def _cfg(name, data_dir):
  cfg = data.default_data_config(name)
  cfg.data_dir = str(data_dir)
  cfg.options.update(OPTIONS[name])
  return cfg


def _records(name, data_dir, split):
  src = sources.data_source(data.config.resolve(_cfg(name, data_dir)), split)
  return [src[i] for i in range(len(src))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_video")


def test_moving_digits_stay_inside_bounce_and_match_the_pixels(data_dir):
  train = _records("moving_digits", data_dir, "train")
  val = _records("moving_digits", data_dir, "validation")
  assert (len(train), len(val)) == (24, 8)
  images, classes = mnist.images()
  limit = 32 - moving_digits.DIGIT
  bounces = 0
  for rec in train + val:
    clip, pos, vel = rec["video"], rec["positions"], rec["velocities"]
    assert clip.shape == (8, 32, 32, 1) and clip.dtype == np.uint8
    assert pos.shape == vel.shape == (8, 2, 2)
    assert (pos >= 0).all() and (pos <= limit).all()  # Whole digits inside every frame.
    assert ((np.abs(vel) >= 1) & (np.abs(vel) <= moving_digits.MAX_SPEED)).all()
    np.testing.assert_array_equal(rec["digits"], classes[rec["digit_rows"]])
    for t in range(7):
      ahead = pos[t] + vel[t]
      hit = (ahead < 0) | (ahead > limit)
      bounces += int(hit.sum())
      # Free flight keeps the velocity; a wall reflects the position and flips it.
      np.testing.assert_array_equal(pos[t + 1], np.where(
          ahead < 0, -ahead, np.where(ahead > limit, 2 * limit - ahead, ahead)))
      np.testing.assert_array_equal(vel[t + 1], np.where(hit, -vel[t], vel[t]))
    # Each frame is the brighter of the two digits pasted at their labelled corners.
    for t in range(8):
      want = np.zeros((32, 32), np.uint8)
      for row, (r, c) in zip(rec["digit_rows"], pos[t]):
        want[r:r + 28, c:c + 28] = np.maximum(want[r:r + 28, c:c + 28], images[row, ..., 0])
      np.testing.assert_array_equal(clip[t, ..., 0], want)
  assert bounces > 20
  # Train clips show only mnist's train digits, validation clips only its validation digits.
  opts = data.config.resolve(_cfg("moving_digits", data_dir))["options"]
  rows_t = {int(r) for rec in train for r in rec["digit_rows"]}
  rows_v = {int(r) for rec in val for r in rec["digit_rows"]}
  assert rows_t <= set(moving_digits.mnist_rows("train", opts).tolist())
  assert rows_v <= set(moving_digits.mnist_rows("validation", opts).tolist())
  assert not rows_t & rows_v


def test_moving_shapes_events_read_back_from_frames_equal_the_labels(data_dir):
  train = _records("moving_shapes", data_dir, "train")
  val = _records("moving_shapes", data_dir, "validation")
  kinds = set()
  for rec in train + val:
    clip = rec["video"]
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
    assert {tuple(p) for p in clip.reshape(-1, 3)} <= {(0, 0, 0)} | {
        tuple(p) for p in ms.shapes.PALETTE}
    got = ms.read_events(clip, num_slots=rec["objects"].shape[1])
    assert got["readable"]
    np.testing.assert_array_equal(got["events"], rec["events"])
    np.testing.assert_array_equal(got["objects"], rec["objects"])
    assert rec["caption"].decode() == ms.caption(got["events"])
    # Events happen at their segment's first transition (frame 1, then frame 1 + 7 // 2).
    assert rec["events"][:, 4].tolist() == [1, 4]
    kinds |= set(rec["events"][:, 0].tolist())
  assert kinds == set(range(len(ms.KINDS)))
  # Scoring a (float) sample: its own events match; another clip's do not.
  assert all(ms.matches(r["video"] / 255.0, r["events"])["all"] for r in val[:4])
  other = next(r for r in train if r["caption"] != train[0]["caption"])
  assert not ms.matches(train[0]["video"], other["events"])["all"]
  assert ms.caption(np.array([[ms.MOVES, 0, 0, 0, 1], [ms.APPEARS, 1, 2, -1, 4]])) == (
      "a red square moves left, then a blue circle appears")
  assert ms.caption(np.array([[ms.TURNS, 3, 1, 5, 1], [ms.BECOMES, 3, 5, 0, 4]])) == (
      "a green plus turns cyan, then the cyan plus becomes a square")


def test_pulse_radius_read_from_pixels_follows_the_signal(data_dir):
  records = _records("pulse", data_dir, "train") + _records("pulse", data_dir, "validation")
  read = np.concatenate([pulse.radius_from_pixels(r["video"]) for r in records])
  signal = np.concatenate([r["signal"] for r in records])
  np.testing.assert_allclose(read, np.concatenate([r["radius"] for r in records]), atol=0.05)
  assert np.corrcoef(read, signal)[0, 1] > 0.99
  assert read.max() - read.min() > 3  # pixels: the blob visibly pulses
  for r in records:
    assert 50 <= r["heart_rate"] <= 120 and 0.6 <= r["amplitude"] <= 1.2
    np.testing.assert_allclose(r["signal"], pulse.frame_signal(
        r["heart_rate"], r["amplitude"], r["phase"], 8, 12.0), rtol=1e-6)
  # One beat: R peak highest, S the lowest dip, periodic in the phase.
  phase = np.linspace(0, 1, 1001)
  beat = pulse.ecg(phase)
  assert abs(phase[beat.argmax()] - 0.40) < 0.005 and abs(phase[beat.argmin()] - 0.45) < 0.01
  np.testing.assert_allclose(pulse.ecg(phase + 3), beat, atol=1e-9)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_builds_are_deterministic_and_validation_never_repeats_train(name, data_dir, tmp_path):
  train = _records(name, data_dir, "train")
  val = _records(name, data_dir, "validation")
  seen = {r["video"].tobytes() for r in train}
  assert len(seen) == len(train) and not any(r["video"].tobytes() in seen for r in val)
  again = _records(name, tmp_path, "train")  # A second build from scratch.
  assert [r["video"].tobytes() for r in again] == [r["video"].tobytes() for r in train]


@pytest.mark.parametrize("name,fields", [
    ("moving_digits", {"digits": (2,), "positions": (8, 2, 2), "velocities": (8, 2, 2)}),
    ("moving_shapes", {"events": (2, 5), "objects": (8, 4, 4),
                       "caption": (ms.caption_len(2),)}),
    ("pulse", {"signal": (8,), "radius": (8,), "heart_rate": (), "amplitude": ()}),
])
def test_video_batches_through_the_pipeline(name, fields, data_dir):
  cfg = _cfg(name, data_dir)
  it = data.make_iterator(cfg, split="validation", batch_size=5, seed=0, shuffle=False,
                          num_epochs=1)
  batches = list(it)
  spec = data.batch_spec(cfg, 5)
  channels = 3 if name == "moving_shapes" else 1
  want = 16 if name == "moving_shapes" else 8
  assert len(batches) == -(-want // 5)
  for batch in batches:
    assert set(batch) == set(spec) == {"video", "mask", *fields}
    for key, value in batch.items():
      assert value.shape == spec[key].shape and value.dtype == spec[key].dtype, key
    assert batch["video"].shape == (5, 8, 32, 32, channels)
    assert batch["video"].dtype == np.float32 and 0 <= batch["video"].min()
    assert batch["video"].max() <= 1
  assert sum(b["mask"].sum() for b in batches) == want  # The padded rows are masked.
  first = batches[0]
  records = _records(name, data.config.resolve(cfg)["data_dir"], "validation")
  np.testing.assert_array_equal(first["video"][0], records[0]["video"] / np.float32(255))
  if name == "moving_shapes":  # Caption bytes, zero-padded; the events match the pixels.
    text = bytes(first["caption"][0].astype(np.uint8)).rstrip(b"\0")
    assert text == records[0]["caption"]
    assert ms.matches(first["video"][0], first["events"][0])["all"]


def test_video_strip_and_show(data_dir, tmp_path, capsys):
  clips = np.stack([r["video"] for r in _records("moving_shapes", data_dir, "train")[:2]])
  path = video_evals.save_video_strip(clips, str(tmp_path / "s.png"), scale=1)
  strip = np.asarray(Image.open(path))
  assert strip.shape == (2 * 33 + 1, 8 * 33 + 1, 3)
  np.testing.assert_array_equal(strip[1 + 33:1 + 33 + 32, 1 + 3 * 33:1 + 3 * 33 + 32],
                                clips[1, 3])  # clip 1, frame 3
  # Digits move on every frame, so no two GIF frames are equal (PIL would merge those).
  moving = np.stack([r["video"] for r in _records("moving_digits", data_dir, "train")[:2]])
  gif = Image.open(video_evals.save_video_gif(moving, str(tmp_path / "s.gif")))
  assert gif.n_frames == 8 and gif.size == (2 * 34, 2 * 67)  # (w, h): 2 clips in a column, x2
  argv = ["show", "moving_shapes", "--data-dir", str(data_dir), "--num", "1",
          "--out", str(tmp_path / "show.png")]
  for kv in ("size=32", "num_frames=8", "num_train=32", "num_validation=16"):
    argv += ["--option", kv]
  assert data_cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "video (8, 32, 32, 3) uint8; caption: a " in out and (tmp_path / "show.png").exists()
  assert data_cli.main(["show", "mnist", "--out", str(tmp_path / "x.png")]) == 2
  assert "--out writes video clips" in capsys.readouterr().err


@pytest.mark.parametrize("name,options,match", [
    ("moving_digits", {"num_digits": 3}, "num_digits=3 must be 1 or 2"),
    ("moving_digits", {"size": 30}, "size=30 must be in 32..256"),
    ("moving_shapes", {"size": 36}, "size=36 must be a multiple of 8"),
    ("moving_shapes", {"num_frames": 3, "num_events": 3}, "at most num_frames - 1 = 2"),
    ("pulse", {"fps": 30.0}, "fps=30.0 must be in 4..16"),
    ("pulse", {"num_frames": 1}, "num_frames=1 must be in 2..256"),
    ("pulse", {"num_train": 0}, "num_train=0 must be >= 1"),
])
def test_bad_options_give_one_clear_config_error(name, options, match):
  with pytest.raises(ConfigError, match=match):
    data.validate_data_config({"name": name, "options": options})
  with pytest.raises(ConfigError, match="does not allow"):
    data.validate_data_config({"name": name, "augment": "flip"})
