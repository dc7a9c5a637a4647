"""`tokenlab bench gpu`: refuses without a GPU; --smoke runs its correctness part (tiny, in the
Pallas interpreter) and writes the report. Nothing here measures a GPU."""

import json

import pytest

from tokenlab.bench import gpu
from tokenlab.errors import TokenlabError


def test_gpu_check_refuses_without_a_gpu(tmp_path):
  with pytest.raises(TokenlabError, match="needs a GPU.*--smoke"):
    gpu.main(["--out", str(tmp_path)])
  assert not list(tmp_path.iterdir())   # nothing written


def test_gpu_check_smoke_writes_json_and_markdown(tmp_path):
  assert gpu.main(["--smoke", "--out", str(tmp_path)]) == 0
  result = json.loads((tmp_path / "gpu_check.json").read_text())
  assert list(result["steps"]) == ["correctness"] and result["smoke"]
  rows = result["steps"]["correctness"]["value"]
  assert {r["kernel"] for r in rows} == {"windowed_attention", "token_merge"}
  assert len(rows) == 2 and all(r["ok"] for r in rows)
  assert all(r["max_err_forward"] < 1e-3 for r in rows if "bfloat16" not in r["case"])
  md = (tmp_path / "gpu_check.md").read_text()
  assert "| correctness | ok |" in md and "merge_by_boundaries" in md


def test_a_mismatch_is_reported_not_hidden(tmp_path, monkeypatch):
  row = dict(kernel="windowed_attention", max_err_forward=0.5, max_err_grads=0.5, ok=False)
  monkeypatch.setattr(gpu, "check_attention", lambda case, interpret: dict(row, **{
      "case": case["name"], "ok": "GQA" not in case["name"]}))
  monkeypatch.setattr(gpu, "check_token_merge", lambda smoke, interpret: [])
  assert gpu.main(["--smoke", "--out", str(tmp_path)]) == 1
  step = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["correctness"]
  assert step["status"] == "failed" and "GQA" in step["error"]
