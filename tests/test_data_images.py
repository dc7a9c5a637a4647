"""The embedded image datasets (mnist, shapes, photos): offline builds, contents, pipeline."""

import gzip

import numpy as np
import pytest

from tokenlab import data
from tokenlab.data import mnist, photos, pipeline, shapes, sources
from tokenlab.errors import ConfigError

SHAPES_OPTS = {"num_train": 240, "num_validation": 80}
PHOTOS_OPTS = {"size": 64, "num_train": 48, "num_validation": 16}


def _cfg(name, data_dir, **options):
  cfg = data.default_data_config(name)
  cfg.data_dir = str(data_dir)
  cfg.options.update(options)
  return cfg


def _records(cfg, split):
  src = sources.data_source(data.config.resolve(cfg), split)
  return [src[i] for i in range(len(src))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_images")


# --- mnist -------------------------------------------------------------------------------

def test_mnist_builds_stratified_disjoint_splits_of_the_real_digits(data_dir):
  cfg = _cfg("mnist", data_dir, size=32)
  train, val = _records(cfg, "train"), _records(cfg, "validation")
  assert (len(train), len(val)) == (4500, 500)
  for split in (train, val):
    labels = np.array([r["label"] for r in split])
    assert (np.bincount(labels, minlength=10) == len(split) // 10).all()  # 450 / 50 per class
  idx_t, idx_v = {int(r["index"]) for r in train}, {int(r["index"]) for r in val}
  assert not idx_t & idx_v and len(idx_t | idx_v) == 5000
  # The stored pixels are the csv row, zero-padded from 28 to 32.
  with gzip.open(mnist.source_path(), "rt") as f:
    first = np.array(f.readline().split(","), np.int64)
  rec = next(r for r in train + val if r["index"] == 0)
  img = rec["image"]
  assert img.shape == (32, 32, 1) and img.dtype == np.uint8
  np.testing.assert_array_equal(img[2:30, 2:30, 0], first[:-1].reshape(28, 28))
  assert rec["label"] == first[-1]
  assert not img[:2].any() and not img[:, :2].any() and not img[30:].any()
  x, y = mnist.images()
  assert x.shape == (5000, 28, 28, 1) and x.max() == 255 and x.min() == 0
  assert 0.1 < (x > 127).mean() < 0.25  # Strokes cover a small share, as in MNIST.
  with pytest.raises(ConfigError, match="28"):
    data.validate_data_config({"name": "mnist", "options": {"size": 30}})


# --- shapes ------------------------------------------------------------------------------

def test_shapes_labels_are_read_back_exactly_from_the_pixels(data_dir):
  cfg = _cfg("shapes", data_dir, **SHAPES_OPTS)
  train, val = _records(cfg, "train"), _records(cfg, "validation")
  assert (len(train), len(val)) == (240, 80)
  for rec in train + val:
    img = rec["image"]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert colours == {(0, 0, 0), tuple(shapes.PALETTE[rec["colour"]])}
    got = shapes.attributes(img)
    n = int(rec["count"])
    assert (got["shape"], got["colour"], got["count"]) == (rec["label"], rec["colour"], n)
    np.testing.assert_array_equal(got["positions"], rec["positions"][:n])
    assert (rec["positions"][n:] == -1).all()
    # Each object's pixels are exactly its template at its position.
    s = shapes.object_size(32)
    for r, c in rec["positions"][:n]:
      np.testing.assert_array_equal(img[r:r + s, c:c + s].max(-1) > 0,
                                    shapes.templates(s)[rec["label"]])
  # Every shape, colour and count occurs; validation never repeats a train image.
  assert {r["label"] for r in train} == set(range(len(shapes.SHAPES)))
  assert {r["colour"] for r in train} == set(range(len(shapes.COLOURS)))
  assert {int(r["count"]) for r in train} == {1, 2, 3}
  train_images = {r["image"].tobytes() for r in train}
  assert not any(r["image"].tobytes() in train_images for r in val)


def test_shapes_scoring_of_noisy_and_wrong_samples():
  rng = np.random.default_rng(0)
  opts = dict(data.default_data_config("shapes").options.to_dict(), **SHAPES_OPTS)
  hits = []
  for labels in shapes.split_labels("validation", opts)[:40]:
    img = shapes.render(32, labels["label"], labels["colour"], labels["positions"])
    noisy = np.clip(img / 255.0 + rng.normal(0, 0.1, img.shape), 0, 1)  # a float "sample"
    hits.append(shapes.matches(noisy, labels["label"], labels["colour"], labels["count"],
                               labels["positions"])["all"])
  assert all(hits)
  img = shapes.render(32, 1, 2, np.array([[3, 4], [20, 20]]))  # two blue circles
  assert shapes.matches(img, 1, 2, 2) == {"shape": True, "colour": True, "count": True,
                                          "all": True}
  wrong = shapes.matches(img, 0, 3, 1, np.array([[3, 4], [-1, -1]]))
  assert not any(wrong.values())
  mixed = np.maximum(img, shapes.render(32, 3, 0, np.array([[3, 20]])))
  got = shapes.attributes(mixed)
  assert got["count"] == 3 and got["shape"] == -1 and got["colour"] == -1
  assert sorted(got["shapes"].tolist()) == [1, 1, 3]
  assert shapes.attributes(np.zeros((32, 32, 3)))["count"] == 0
  # Deterministic from the seed; a larger train split only appends.
  more = shapes.split_labels("train", dict(opts, num_train=300))
  for a, b in zip(shapes.split_labels("train", opts), more):
    assert a["label"] == b["label"] and (a["positions"] == b["positions"]).all()


# --- photos ------------------------------------------------------------------------------

def test_photos_crops_and_held_out_validation_photos(data_dir):
  cfg = _cfg("photos", data_dir, **PHOTOS_OPTS)
  opts = data.config.resolve(cfg)["options"]
  train, val = _records(cfg, "train"), _records(cfg, "validation")
  assert (len(train), len(val)) == (48, 16)
  held_out = {photos.PHOTOS.index(n) for n in opts["validation_photos"].split(",")}
  assert {int(r["label"]) for r in val} == held_out
  assert not {int(r["label"]) for r in train} & held_out
  assert len({int(r["label"]) for r in train}) == len(photos.PHOTOS) - len(held_out)
  for rec in train + val:
    img = rec["image"]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 0
    name = photos.PHOTOS[rec["label"]]
    full = photos.photo(name, opts["downscale"])
    np.testing.assert_array_equal(img, full[rec["top"]:rec["top"] + 64,
                                            rec["left"]:rec["left"] + 64])
    if name not in photos.RGB_PHOTOS:
      assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
  astro = photos.photo("astronaut", 2)
  assert astro.shape == (256, 256, 3) and astro.dtype == np.uint8
  assert photos.split_photos("train", dict(opts, grayscale=False)) == [
      n for n in photos.RGB_PHOTOS if n not in ("chelsea", "rocket")]
  with pytest.raises(ConfigError, match="unknown photos"):
    data.validate_data_config({"name": "photos", "options": {"validation_photos": "lena"}})
  with pytest.raises(ConfigError, match="32 or 64"):
    data.validate_data_config({"name": "photos", "options": {"size": 48}})


# --- through the pipeline ----------------------------------------------------------------

@pytest.mark.parametrize("name,options,shape,extra", [
    ("mnist", {"size": 32}, (32, 32, 1), {}),
    ("shapes", SHAPES_OPTS, (32, 32, 3), {"colour": (), "count": (), "positions": (3, 2)}),
    ("photos", PHOTOS_OPTS, (64, 64, 3), {}),
])
def test_image_batches_through_the_pipeline(data_dir, name, options, shape, extra):
  cfg = _cfg(name, data_dir, **options)
  batch = next(data.make_iterator(cfg, split="validation", batch_size=5, seed=0))
  spec = data.batch_spec(cfg, 5)
  assert set(batch) == set(spec) == {"image", "label", "mask", *extra}
  for key, value in batch.items():
    assert value.shape == spec[key].shape and value.dtype == spec[key].dtype, key
  assert batch["image"].shape == (5, *shape)
  assert 0 <= batch["image"].min() and batch["image"].max() <= 1 and batch["image"].max() > 0
  assert (batch["mask"] == 1).all() and (batch["label"] >= 0).all()
  if name == "shapes":  # The batch's labels still describe its pixels.
    for img, label, colour, count in zip(batch["image"], batch["label"], batch["colour"],
                                         batch["count"]):
      assert shapes.matches(img, label, colour, count)["all"]


def test_augmentations_are_train_only_seeded_and_restorable(data_dir):
  cfg = _cfg("photos", data_dir, **PHOTOS_OPTS)
  plain = next(data.make_iterator(cfg, split="train", batch_size=8, seed=3, shuffle=False))
  cfg.augment = "flip,crop"
  it = data.make_iterator(cfg, split="train", batch_size=8, seed=3, shuffle=False)
  first = next(it)
  np.testing.assert_array_equal(first["label"], plain["label"])
  assert not np.array_equal(first["image"], plain["image"])
  state = it.get_state()
  nxt = next(it)
  again = data.make_iterator(cfg, split="train", batch_size=8, seed=3, shuffle=False)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["image"], nxt["image"])
  val = next(data.make_iterator(cfg, split="validation", batch_size=8, seed=3, shuffle=False))
  cfg.augment = ""
  val_plain = next(data.make_iterator(cfg, split="validation", batch_size=8, seed=3,
                                      shuffle=False))
  np.testing.assert_array_equal(val["image"], val_plain["image"])
  # A flip alone mirrors exactly; a crop shifts by at most size // 8 pixels.
  aug = pipeline.AugmentImage(flip=True)
  img = plain["image"][0]
  outs = [aug.random_map({"image": img}, np.random.default_rng(i))["image"] for i in range(8)]
  assert all(np.array_equal(o, img) or np.array_equal(o, img[:, ::-1]) for o in outs)
  pad = 64 // 8
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
  windows = [padded[r:r + 64, c:c + 64] for r in range(2 * pad + 1) for c in range(2 * pad + 1)]
  crop = pipeline.AugmentImage(crop=True)
  for i in range(4):
    out = crop.random_map({"image": img}, np.random.default_rng(i))["image"]
    assert out.shape == img.shape and any(np.array_equal(out, w) for w in windows)
  with pytest.raises(ConfigError, match="does not allow"):
    data.validate_data_config({"name": "shapes", "augment": "flip"})
  with pytest.raises(ConfigError, match="does not allow"):
    data.validate_data_config({"name": "photos", "augment": "rotate"})
