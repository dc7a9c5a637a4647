"""The CPU matmul peak behind perf/mfu: measured once per host and cached, not per run."""

import json

from tokenlab.train import metrics


def test_peak_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
  calls = []
  values = iter([5e9, 3e9, 8e9])

  def fake_measure(*args, **kwargs):
    calls.append(1)
    return next(values)

  monkeypatch.setattr(metrics, "measure_matmul_peak", fake_measure)
  first, source = metrics.peak_flops(str(tmp_path))
  second, _ = metrics.peak_flops(str(tmp_path))
  assert (first, second, len(calls)) == (5e9, 5e9, 1)
  assert "cached in" in source
  # Re-measuring keeps the best figure: a slower measurement does not lower the cached peak,
  # a faster one raises it.
  assert metrics.peak_flops(str(tmp_path), remeasure=True)[0] == 5e9
  assert metrics.peak_flops(str(tmp_path), remeasure=True)[0] == 8e9
  assert len(calls) == 3
  cached = json.loads((tmp_path / "peak_flops.json").read_text())
  assert list(cached.values()) == [8e9] and metrics._host_key() in cached
