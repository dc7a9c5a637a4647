"""Linear probes over frozen features: how linearly readable is a property from a model?

    feats = extract_features(lambda x: method.features(params, x), inputs, batch_size=64)
    result = linear_probe(train_feats, train_y, test_feats, test_y)

`linear_probe` standardises the features (train statistics), fits an L2-regularised logistic
regression per task (scikit-learn, a project dependency) and scores the held-out set. Labels
are (n,) for one task (binary or multi-class) or (n, T) for T binary tasks (e.g. the presence
of each of T motifs); the result averages the per-task scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def extract_features(fn: Callable[[Any], Any], inputs: np.ndarray, *,
                     batch_size: int = 64) -> np.ndarray:
  """Applies `fn` (e.g. a jitted feature function) to `inputs` in batches; (n, F) float32.

  The last batch is padded to `batch_size` (one compiled shape) and the padding dropped.
  """
  inputs = np.asarray(inputs)
  out = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    feats = np.asarray(fn(chunk), np.float32)
    out.append(feats[:batch_size - pad].reshape(batch_size - pad, -1))
  return np.concatenate(out)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, l2: float = 1.0, max_iter: int = 2000
                 ) -> dict[str, float]:
  """Fits a logistic-regression probe per task; returns held-out accuracy (and AUC if binary).

  Args:
    train_x, test_x: (n, F) features. train_y, test_y: (n,) or (n, T) integer labels.
    l2: inverse of scikit-learn's C (larger = stronger regularisation).
  Returns:
    {'accuracy', 'majority_accuracy', 'auc' (binary tasks only)} averaged over tasks, plus
    'accuracy/<t>' per task when there are several.
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  ty, vy = np.asarray(train_y), np.asarray(test_y)
  if ty.ndim == 1:
    ty, vy = ty[:, None], vy[:, None]
  acc, majority, aucs, out = [], [], [], {}
  for t in range(ty.shape[1]):
    classes = np.unique(ty[:, t])
    common = classes[np.argmax([np.sum(ty[:, t] == c) for c in classes])]
    majority.append(float(np.mean(vy[:, t] == common)))
    if len(classes) < 2:  # nothing to learn: predict the only class
      acc.append(majority[-1])
      continue
    clf = LogisticRegression(C=1.0 / l2, max_iter=max_iter)
    clf.fit(train_x, ty[:, t])
    acc.append(float(clf.score(test_x, vy[:, t])))
    if len(classes) == 2 and len(np.unique(vy[:, t])) == 2:
      aucs.append(float(roc_auc_score(vy[:, t], clf.predict_proba(test_x)[:, 1])))
    if ty.shape[1] > 1:
      out[f"accuracy/{t}"] = acc[-1]
  out["accuracy"] = float(np.mean(acc))
  out["majority_accuracy"] = float(np.mean(majority))
  if aucs:
    out["auc"] = float(np.mean(aucs))
  return out
