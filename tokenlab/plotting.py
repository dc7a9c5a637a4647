"""PNG plots of a workdir's metrics (`tokenlab plot WORKDIR [--log-loss]`).

Metric names are `split/name` (`train/loss`, `eval/bits_per_byte`) or any deeper path a method
logs (`train/stage1/boundary_prob`, `perf/tokens_per_sec`). Plots:

- `summary.png`: the run on one page: loss (train and eval), the eval metrics, throughput;
- one PNG per metric group, one panel per metric, train and eval of a metric on the same axes.
  A group is the first component of the name under train/ or eval/ (`stage1/...` -> `stage1`,
  `loss` -> `loss`), or the whole prefix for other splits (`perf`).

File names are made safe for any metric name (path separators and other characters are
replaced), so nested or unusual names never become directories.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict

from tokenlab.errors import TokenlabError
from tokenlab.train.metrics import latest_by_step, read_metrics

SPLITS = ("train", "eval")
Series = dict[str, list[tuple[int, float]]]


def safe_name(name: str) -> str:
  """A file-name stem for any metric (group) name: '/' -> '__', others -> '_'."""
  stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__")).strip("._")
  return stem or "metric"


def read_series(workdir: str) -> Series:
  """{metric: [(step, value), ...]} of every numeric metric in WORKDIR/metrics.jsonl, sorted
  by step. A step logged twice (a resumed run repeats the steps after its checkpoint) keeps
  its last write; null (non-finite) values and partial lines are left out."""
  rows = read_metrics(workdir)
  if not rows:
    raise TokenlabError(f"{workdir}/metrics.jsonl is missing or empty; train into it first")
  series: Series = {}
  for key, by_step in latest_by_step(rows).items():
    if key.startswith("info/"):
      continue
    points = [(step, float(value)) for step, value in sorted(by_step.items())
              if isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(float(value))]
    if points:
      series[key] = points
  return series


def group_metrics(series: Series) -> dict[str, dict[str, list[str]]]:
  """{group: {metric name: [keys of that metric, train first]}} (see the module docstring).
  Metrics logged only at step 0 (compile time, FLOPs per step) are values, not curves: left
  out; a metric logged at one training step is a single point."""
  groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
  for key in sorted(series, key=lambda k: (k.split("/", 1)[-1], k)):
    if all(step == 0 for step, _ in series[key]):
      continue
    split, _, name = key.partition("/")
    if split in SPLITS and name:
      group = name.split("/", 1)[0]
    else:
      group, name = split, key
    groups[group][name].append(key)
  return {g: dict(m) for g, m in groups.items()}


def _is_loss(name: str) -> bool:
  return bool(re.search(r"loss|nll|perplexity|bits_per", name))


def _draw(ax, series: Series, keys: list[str], title: str, log_loss: bool) -> None:
  for key in keys:
    steps, values = zip(*series[key])
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3 if len(steps) > 1 else 6,
            label=key.split("/", 1)[0] if "/" in key else key)
  if log_loss and _is_loss(title) and all(v > 0 for k in keys for _, v in series[k]):
    ax.set_yscale("log")
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("step", fontsize=8)
  ax.grid(alpha=0.3)
  ax.tick_params(labelsize=7)
  ax.legend(fontsize=7)


def plot_workdir(workdir: str, out_dir: str | None = None, log_loss: bool = False,
                 summary_only: bool = False) -> list[str]:
  """Writes summary.png and one PNG per metric group into WORKDIR/plots (or `out_dir`);
  returns the paths written, summary first. `log_loss`: log-scaled y for loss-like metrics;
  `summary_only`: summary.png alone (layout and PNG encoding cost ~0.5 s a figure)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  series = read_series(workdir)
  groups = group_metrics(series)
  if not groups:
    raise TokenlabError(f"{workdir}/metrics.jsonl has no metric logged after step 0; train "
                        f"at least one step to get curves")
  from etils import epath

  from tokenlab.train.workdir import join
  out_dir = out_dir or join(workdir, "plots")
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)   # a local path or a gs://... URL
  run = epath.Path(workdir).name if "://" in workdir else os.path.basename(
      os.path.abspath(workdir))
  paths = [_summary(plt, series, groups, join(out_dir, "summary.png"), run, log_loss)]
  used: set[str] = {"summary"}
  for group, metrics in ([] if summary_only else sorted(groups.items())):
    stem = safe_name(group)
    while stem in used:       # two names that map to one stem: keep both files
      stem += "_"
    used.add(stem)
    n = len(metrics)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, sorted(metrics.items())):
      _draw(ax, series, keys, name, log_loss)
    for ax in list(axes.flat)[n:]:
      ax.axis("off")
    fig.suptitle(f"{group} — {run}", fontsize=10)
    fig.tight_layout()
    path = join(out_dir, f"{stem}.png")
    _savefig(fig, path)
    plt.close(fig)
    paths.append(path)
  return paths


def _savefig(fig, path: str) -> None:
  """fig.savefig to a local path or any `etils.epath` URL."""
  from etils import epath
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, dpi=100, format="png")


def _summary(plt, series: Series, groups, path: str, run: str, log_loss: bool) -> str:
  """One page: loss (train + eval), the other eval metrics, tokens/s."""
  loss = groups.get("loss", {}).get("loss", [])
  evals = [k for k in sorted(series) if k.startswith("eval/") and k != "eval/loss"]
  speed = [k for k in ("perf/tokens_per_sec",) if series.get(k)]
  panels = [(p, keys) for p, keys in (("loss", loss), ("eval metrics", evals),
                                      ("tokens/s", speed)) if keys]
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.4 * max(len(panels), 1), 3.4),
                           squeeze=False)
  for ax, (title, keys) in zip(axes.flat, panels):
    _draw(ax, series, keys, title, log_loss)
    if title == "eval metrics":
      for line, key in zip(ax.get_lines(), keys):
        line.set_label(key)
      ax.legend(fontsize=7)
  if not panels:
    axes.flat[0].text(0.5, 0.5, "no loss, eval or throughput curves", ha="center")
    axes.flat[0].axis("off")
  fig.suptitle(f"run summary — {run}", fontsize=10)
  fig.tight_layout()
  _savefig(fig, path)
  plt.close(fig)
  return path
