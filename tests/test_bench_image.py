"""The image benchmarks run end to end in a tiny setting and report what they claim to."""

from __future__ import annotations

import json

from tokenlab.bench import image_generation, image_tokenizer


def test_image_generation_bench_tiny(tmp_path, capsys):
  out = tmp_path / "gen.json"
  assert image_generation.main(["--grid", "3", "--batch", "2", "--d_model", "32",
                                "--num_layers", "1", "--num_heads", "2", "--num_bits", "4",
                                "--maskgit_steps", "2", "--flow_steps", "2",
                                "--latent_channels", "4", "--repeats", "1",
                                "--json", str(out)]) == 0
  result = json.loads(out.read_text())
  samplers = result["samplers"]
  assert set(samplers) == {"AR, KV cache (peer)", "MaskGIT", "flow matching, Euler"}
  # one forward per code for AR, the configured step counts for the others
  assert [s["forward_passes"] for s in samplers.values()] == [9, 2, 2]
  for s in samplers.values():
    assert s["images_per_sec"] > 0 and abs(s["images_per_sec"] * s["seconds"] - 2) < 1e-6
  assert samplers["AR, KV cache (peer)"]["speedup_vs_ar"] == 1.0
  assert "images/s" in capsys.readouterr().out


def test_image_tokenizer_bench_tiny(tmp_path, capsys):
  out = tmp_path / "tok.json"
  assert image_tokenizer.main(["--config", "experiments/image_tokenizer.py:size=tiny,data=shapes",
                               "--steps", "3", "--log_every", "1", "--peak_size", "256", "--json", str(out)]) == 0
  result = json.loads(out.read_text())
  # a conv autoencoder has no analytic count: FLOPs come from XLA's cost analysis, and images
  # (not tokens) are what the step consumes
  assert result["flops_source"] == "XLA cost analysis" and result["tokens_per_sec"] is None
  assert result["model_tflops_per_sec"] > 0 and 0 < result["mfu"] < 1.5
  assert abs(result["examples_per_sec"] - result["steps_per_sec"] * result["batch_size"]) < 1e-6
  assert "MFU" in capsys.readouterr().out
