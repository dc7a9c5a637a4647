"""Real multi-process training with CPU collectives, started by launch/local.py.

Elastic runs through `tokenlab.train.loop.train` and the real pipeline (markov, the elastic
training stream of tokenlab/data/elastic.py), 24 steps of tiny transformer_lm, global batch 8:

* reference: one process x 4 devices, uninterrupted;
* 2x2 -> 1x4: two processes x 2 devices, SIGTERM at step 4 (JAX's preemption service picks
  the step every process stops at), resumed by one process x 4 devices;
* 1x4 -> 2x2: the reverse.
Every step's loss of both interrupted runs equals the reference's (relative 1e-5), so the
global batch at step s does not depend on the process count, and a checkpoint's data stream
restores on another process count exactly where it stopped.

* disjointness: in a 2x2 run each process pulls 5 batches from the trainer's own data iterator
  (process index/count from jax.distributed) and 5 from in-code synthetic data (caft's,
  config.data.name="method"): the two processes never feed the same row, and each gets its
  full local batch every step.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = textwrap.dedent('''
    """Trains tiny transformer_lm on markov through the real pipeline; see the test."""
    import hashlib, json, os, signal, sys
    from tokenlab.train import distributed
    distributed.maybe_initialize()
    import jax
    import numpy as np
    from tokenlab.config import load_config
    from tokenlab.train import loop

    workdir, mode = sys.argv[1], sys.argv[2]
    common = ["model.num_layers=1", "train.steps=24", "train.log_every=1", "train.eval_every=4",
              "train.eval_batches=1", "checkpoint.every_steps=100", "train.batch_size=8",
              "checkpoint.async_save=false", "train.progress=false", "mesh.data=-1",
              "optimizer.warmup_steps=1", "data.seq_len=64"]
    config = load_config("experiments/transformer_lm.py:size=tiny,data=markov", common)

    def no_eval(batch_size, seed):   # evaluation compiles nothing (the test is about training)
      return iter(())

    def preempted_at_first_eval(batch_size, seed):
      os.kill(os.getpid(), signal.SIGTERM)   # the preemption notice, at step 4's evaluation
      return iter(())

    result = loop.train(config, workdir, train_iter_fn=loop._default_iterators(config)[0],
                        eval_iter_fn=preempted_at_first_eval if mode == "preempt" else no_eval)
    print("RESULT", json.dumps({"step": result["step"],
                                "stopped_by": result.get("info/stopped_by", "")}), flush=True)

    if mode == "disjoint":
      local_batch = config.train.batch_size // jax.process_count()
      it = loop._default_iterators(config)[0](local_batch, config.seed)
      seen = [[hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest()
               for r in next(it)["inputs"]] for _ in range(5)]
      # In-code synthetic data (config.data.name="method"): each process its own stream.
      config = load_config("experiments/caft.py:size=tiny,stage=pretrain", common[1:2])
      it = loop._default_iterators(config)[0](local_batch, config.seed)
      seen_method = [[hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest()
                      for r in next(it)["inputs"]] for _ in range(5)]
      with open(os.path.join(workdir, f"rows_{jax.process_index()}.json"), "w") as f:
        json.dump({"process_count": jax.process_count(), "devices": jax.device_count(),
                   "local_devices": jax.local_device_count(), "rows": seen,
                   "method_rows": seen_method}, f)
''')


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _env(tmp_path):
  env = dict(os.environ, TOKENLAB_DATA_DIR=str(tmp_path / "data"), JAX_PLATFORMS="cpu",
             XLA_FLAGS=("--xla_force_host_platform_device_count=4 "
                        + os.environ["TOKENLAB_TEST_COMPILE_FLAGS"]), PYTHONUNBUFFERED="1")
  for k in ("TOKENLAB_COORDINATOR", "TOKENLAB_NUM_PROCESSES", "TOKENLAB_PROCESS_ID"):
    env.pop(k, None)
  return env


def _start(driver, workdir, mode, processes, env):
  """A Popen of the driver: one process x 4 devices, or launch/local.py's 2 x 2."""
  cmd = [sys.executable, str(driver), str(workdir), mode]
  if processes == 2:
    cmd = [sys.executable, "launch/local.py", "--processes", "2", "--devices-per-process", "2",
           "--timeout", "300", "--"] + cmd
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc):
  out = proc.communicate(timeout=330)[0]
  assert proc.returncode == 0, out[-4000:]
  results = [json.loads(line.split("RESULT", 1)[1]) for line in out.splitlines()
             if "RESULT" in line]
  assert results, out[-2000:]
  return results[0], out


def test_elastic_resume_across_process_counts_matches_the_uninterrupted_run(tmp_path):
  driver = tmp_path / "driver.py"
  driver.write_text(DRIVER)
  env = _env(tmp_path)
  # Build the dataset once, so that concurrent first runs do not race to build it.
  subprocess.run([sys.executable, "-m", "tokenlab", "data", "show", "markov", "--num", "1"],
                 cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
  ref, a, b = tmp_path / "ref", tmp_path / "a", tmp_path / "b"
  first = [_start(driver, ref, "plain", 1, env), _start(driver, a, "preempt", 2, env)]
  results = [_finish(p) for p in first]
  stop_a = results[1][0]
  print("2x2 run stopped at step", stop_a["step"])
  assert stop_a["stopped_by"] == "SIGTERM" and 4 <= stop_a["step"] < 24, results[1][1][-2000:]
  second = [_start(driver, a, "disjoint", 1, env), _start(driver, b, "preempt", 1, env)]
  results = [_finish(p) for p in second]
  assert results[0][0]["step"] == 24   # 2x2 -> 1x4 finished
  stop_b = results[1][0]
  assert stop_b["stopped_by"] == "SIGTERM" and stop_b["step"] == 4
  res_b, out_b = _finish(_start(driver, b, "disjoint", 2, env))   # 1x4 -> 2x2
  assert res_b["step"] == 24, out_b[-2000:]

  want = _losses(ref)
  assert sorted(want) == list(range(1, 25))
  a_loss, b_loss = _losses(a), _losses(b)
  assert sorted(a_loss) == sorted(b_loss) == sorted(want)
  ref_l = np.array([want[s] for s in sorted(want)])
  assert np.all(np.isfinite(ref_l)) and abs(ref_l[-1] - ref_l[0]) > 1e-3   # the losses move
  np.testing.assert_allclose([a_loss[s] for s in sorted(want)], ref_l, rtol=1e-5)
  np.testing.assert_allclose([b_loss[s] for s in sorted(want)], ref_l, rtol=1e-5)

  # Disjointness of what each process of the 2x2 run fed, from the real pipeline and from
  # in-code data.
  info = [json.loads((b / f"rows_{p}.json").read_text()) for p in (0, 1)]
  for i in info:
    assert (i["process_count"], i["devices"], i["local_devices"]) == (2, 4, 2)
    assert len(i["rows"]) == 5 and all(len(r) == 4 for r in i["rows"])
  for key in ("rows", "method_rows"):
    rows0 = {h for step in info[0][key] for h in step}
    rows1 = {h for step in info[1][key] for h in step}
    assert len(rows0) == 20 and len(rows1) == 20 and not rows0 & rows1, key
  assert "[p0]" in out_b and "[p1]" in out_b
