"""PNG plots of a workdir's metrics (`tokenlab plot WORKDIR`)."""

from __future__ import annotations

import os
from collections import defaultdict

from tokenlab.train.metrics import read_metrics


def plot_workdir(workdir: str, out_dir: str | None = None) -> list[str]:
  """Writes one PNG per metric group (train/eval loss together, perf, ...) into
  WORKDIR/plots (or `out_dir`); returns the paths written."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(workdir)
  if not rows:
    from tokenlab.errors import TokenlabError
    raise TokenlabError(f"{workdir}/metrics.jsonl is missing or empty; train into it first")
  series: dict[str, list[tuple[int, float]]] = defaultdict(list)
  for row in rows:
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and not key.startswith("info/"):
        series[key].append((row["step"], float(value)))
  # One figure per metric name; train/X and eval/X share a figure.
  groups: dict[str, list[str]] = defaultdict(list)
  for key in sorted(k for k in series if len(series[k]) > 1):  # one-off values: not curves
    prefix, _, name = key.partition("/")
    groups[name if prefix in ("train", "eval") else key.replace("/", "_")].append(key)
  out_dir = out_dir or os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, keys in sorted(groups.items()):
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
      steps, values = zip(*series[key])
      ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.set_title(f"{name} — {os.path.basename(os.path.abspath(workdir))}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths
