"""`tokenlab plot`: any metric name, one figure per group, a run summary, log-scaled loss."""

import json
import os

import pytest

from tokenlab.cli import main
from tokenlab.plotting import group_metrics, plot_workdir, read_series, safe_name


def _write_metrics(workdir, rows):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _rows(n=5):
  for step in range(1, n + 1):
    yield {"step": step, "train/loss": 3.0 / step, "train/stage1/boundary_prob": 0.1 * step,
           "train/stage1/ratio": 5.0 - step / 10, "train/acc@k<3>": 0.5,
           "perf/tokens_per_sec": 1000.0 + step, "info/params": 123}
    if step % 2 == 0:
      yield {"step": step, "eval/loss": 3.2 / step, "eval/bits_per_byte": 4.0 / step,
             "eval/stage1/ratio": 5.1 - step / 10}
  yield {"step": 0, "perf/compile_sec": 2.0}


def test_nested_and_odd_metric_names_become_safe_files(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  _write_metrics(workdir, _rows())
  groups = group_metrics(read_series(workdir))
  assert groups["stage1"] == {"stage1/boundary_prob": ["train/stage1/boundary_prob"],
                              "stage1/ratio": ["eval/stage1/ratio", "train/stage1/ratio"]}
  assert groups["loss"] == {"loss": ["eval/loss", "train/loss"]}
  assert "compile_sec" not in str(groups)       # logged once: a value, not a curve
  assert main(["plot", workdir, "--log-loss"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == f"summary: {workdir}/plots/summary.png"
  files = sorted(os.listdir(os.path.join(workdir, "plots")))
  assert files == sorted(["summary.png", "loss.png", "stage1.png", "bits_per_byte.png",
                          "acc_k_3.png", "perf.png"])
  assert all(os.path.getsize(os.path.join(workdir, "plots", f)) > 1000 for f in files)
  assert not any(os.path.isdir(os.path.join(workdir, "plots", f)) for f in files)


def test_safe_name_and_collisions(tmp_path):
  assert safe_name("stage1/boundary_prob") == "stage1__boundary_prob"
  assert safe_name("a b:c") == "a_b_c" and safe_name("../..") == "metric"
  workdir = str(tmp_path / "run")
  _write_metrics(workdir, ({"step": s, "train/a:b": 1.0 * s, "train/a?b": 2.0 * s}
                           for s in (1, 2)))
  paths = plot_workdir(workdir)
  assert len(set(paths)) == 3 and all(os.path.exists(p) for p in paths)


def test_empty_or_single_step_workdir_is_a_clear_error(tmp_path):
  from tokenlab.errors import TokenlabError
  with pytest.raises(TokenlabError, match="missing or empty"):
    plot_workdir(str(tmp_path))
  _write_metrics(str(tmp_path), [{"step": 0, "perf/compile_sec": 1.0}])
  with pytest.raises(TokenlabError, match="no metric logged after step 0"):
    plot_workdir(str(tmp_path))
  # One training step (a --quick arm): single points, still plotted.
  _write_metrics(str(tmp_path), [{"step": 0, "perf/compile_sec": 1.0},
                                 {"step": 1, "train/loss": 1.0, "eval/loss": 1.1}])
  paths = plot_workdir(str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["summary.png", "loss.png"]
