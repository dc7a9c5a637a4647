"""Sample evaluation (tokenlab/evals/image_samples.py): Frechet distance, the cached sample
classifier (class accuracy, FD-classifier), exact shapes attribute accuracy."""

import numpy as np
import pytest

from tokenlab.data import shapes
from tokenlab.errors import TokenlabError
from tokenlab.evals import image_samples as ev


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
  feats = np.random.default_rng(0).normal(size=(400, 16))
  assert ev.frechet_distance(feats, feats) < 1e-6
  shifted = [ev.frechet_distance(feats, feats + d) for d in (0.25, 0.5, 1.0)]
  # Equal covariances: FD is exactly the squared mean shift, 16 d^2.
  np.testing.assert_allclose(shifted, [16 * d * d for d in (0.25, 0.5, 1.0)], rtol=1e-6)
  assert ev.frechet_distance(feats, 2.0 * feats) > 1.0   # spread alone also counts
  other = np.random.default_rng(1).normal(size=(400, 16))  # same law, other draw: small
  assert ev.frechet_distance(feats, other) < 0.2 * shifted[1]


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("classifiers"))
  return ev.train_classifier("digits", steps=300, cache_dir=cache), cache


def test_classifier_learns_digits_and_is_cached(digits_classifier):
  clf, cache = digits_classifier
  assert not clf.from_cache and clf.val_accuracy >= 0.9, clf.val_accuracy
  val = ev.load_split("digits", "validation")
  assert ev.class_accuracy(clf, val["image"], val["label"]) == pytest.approx(clf.val_accuracy)
  again = ev.train_classifier("digits", steps=300, cache_dir=cache)
  assert again.from_cache and again.val_accuracy == clf.val_accuracy
  np.testing.assert_array_equal(again.predict(val["image"]), clf.predict(val["image"]))
  # Other hyper-parameters are another cache entry, not a stale hit.
  assert ev._cache_key("digits", ev.dataset_options("digits"), {"steps": 300}) != \
      ev._cache_key("digits", ev.dataset_options("digits"), {"steps": 301})


def test_sample_scores_separate_real_images_from_noise(digits_classifier):
  clf, _ = digits_classifier
  train, val = ev.load_split("digits", "train"), ev.load_split("digits", "validation")
  real = train["image"][:180]
  noise = np.random.default_rng(0).uniform(size=real.shape).astype(np.float32)
  fd_real = ev.fd_classifier(clf, real, val["image"])
  fd_noise = ev.fd_classifier(clf, noise, val["image"])
  assert fd_noise > 5 * fd_real, (fd_real, fd_noise)
  assert ev.fd_classifier(clf, val["image"], val["image"]) < 1e-3
  scores = ev.evaluate_samples(clf, real, labels=train["label"][:180])
  assert scores["class_accuracy"] > 0.9 and scores["fd"] == pytest.approx(fd_real)
  assert scores["fd_real"] < 3 * fd_real + 1.0 and fd_noise > 5 * scores["fd_real"]
  wrong = (train["label"][:180] + 1) % 10
  assert ev.evaluate_samples(clf, real, labels=wrong)["class_accuracy"] < 0.2
  with pytest.raises(TokenlabError, match="images of shape"):
    clf.predict(np.zeros((2, 16, 16, 1), np.float32))


def test_shapes_attribute_accuracy_is_exact():
  opts = ev.dataset_options("shapes", {"num_train": 20, "num_validation": 12})
  val = ev.load_split("shapes", "validation", opts)
  assert val["image"].shape == (12, 32, 32, 3) and val["image"].max() == 1.0
  wanted = {k: val[k] for k in ("label", "colour", "count", "positions")}
  assert ev.shapes_attribute_accuracy(val["image"], wanted) == {
      "shape": 1.0, "colour": 1.0, "count": 1.0, "positions": 1.0, "all": 1.0}
  recoloured = dict(wanted, colour=(val["colour"] + 1) % len(shapes.COLOURS))
  scores = ev.shapes_attribute_accuracy(val["image"], recoloured)
  assert scores["colour"] == 0.0 and scores["all"] == 0.0 and scores["shape"] == 1.0
  blank = ev.shapes_attribute_accuracy(np.zeros((12, 32, 32, 3), np.uint8), wanted)
  assert blank["count"] == 0.0 and blank["all"] == 0.0


def test_unknown_dataset_and_options_are_named():
  with pytest.raises(TokenlabError, match="no sample classifier"):
    ev.dataset_options("markov")
  with pytest.raises(TokenlabError, match="unknown digits options"):
    ev.dataset_options("digits", {"sise": 16})
