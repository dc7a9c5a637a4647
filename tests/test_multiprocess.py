"""Real multi-process training with CPU collectives, started by launch/local.py.

One 2-process x 2-device run (`launch/local.py`) and one 1-process x 4-device reference run
of the same driver, concurrently:

* equivalence: with the same global batch at every step and the same seed, the losses of
  2x2 match those of 1x4 (relative difference <= 1e-5);
* disjointness: in the 2x2 run, each process then pulls 5 batches from the trainer's own
  data iterator (real pipeline, markov; process index/count from jax.distributed), and 5
  from in-code synthetic data (caft's, config.data.name="method"): the two processes never
  feed the same row, and each gets its full local batch every step.
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
    """Trains tiny transformer_lm on global-slice batches; optionally records data rows."""
    import hashlib, json, os, sys
    from tokenlab.train import distributed
    distributed.maybe_initialize()
    import jax
    import numpy as np
    from tokenlab.config import load_config
    from tokenlab.train import loop

    out, mode = sys.argv[1], sys.argv[2]
    GLOBAL_BATCH, SEQ = 8, 64
    common = ["model.num_layers=1", "train.steps=5", "train.log_every=1", "train.eval_every=0",
              "train.eval_batches=1", "checkpoint.every_steps=5",
              "checkpoint.async_save=false", "train.progress=false", "mesh.data=-1",
              "optimizer.warmup_steps=1"]

    class GlobalSlice:
      """Step i's global batch depends only on (seed, i); each process yields its rows."""
      def __init__(self, local_batch, seed):
        self.local, self.seed, self.step = local_batch, seed, 0
      def __iter__(self):
        return self
      def __next__(self):
        rng = np.random.default_rng((self.seed, self.step))
        self.step += 1
        tok = rng.integers(0, 256, (GLOBAL_BATCH, SEQ + 1)).astype(np.int32)
        mask = (rng.random((GLOBAL_BATCH, SEQ)) > 0.25).astype(np.float32)
        lo = jax.process_index() * self.local
        rows = slice(lo, lo + self.local)
        return {"inputs": tok[rows, :-1], "targets": tok[rows, 1:], "loss_mask": mask[rows]}
      def get_state(self):
        return json.dumps({"step": self.step}).encode()
      def set_state(self, state):
        self.step = json.loads(state)["step"]
      def start_prefetch(self):
        pass

    config = load_config("experiments/transformer_lm.py:size=tiny", common)
    # No eval batches: the final evaluation then compiles nothing (the test is about training).
    loop.train(config, os.path.join(out, "equivalence"), train_iter_fn=GlobalSlice,
               eval_iter_fn=lambda batch_size, seed: iter(()))

    if mode == "disjoint":
      # The trainer's own data iterator in each real process (process index and count come
      # from jax.distributed), pulled for 5 steps of the per-process batch.
      config = load_config("experiments/transformer_lm.py:size=tiny,data=markov", common)
      local_batch = config.train.batch_size // jax.process_count()
      it = loop._default_iterators(config)[0](local_batch, config.seed)
      seen = [[hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest()
               for r in next(it)["inputs"]] for _ in range(5)]
      # In-code synthetic data (config.data.name="method"): each process its own stream.
      config = load_config("experiments/caft.py:size=tiny,stage=pretrain", common[1:])
      it = loop._default_iterators(config)[0](local_batch, config.seed)
      seen_method = [[hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest()
                      for r in next(it)["inputs"]] for _ in range(5)]
      with open(os.path.join(out, f"rows_{jax.process_index()}.json"), "w") as f:
        json.dump({"process_count": jax.process_count(), "devices": jax.device_count(),
                   "local_devices": jax.local_device_count(), "rows": seen,
                   "method_rows": seen_method}, f)
''')


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_two_by_two_matches_one_by_four_and_feeds_disjoint_data(tmp_path):
  driver = tmp_path / "driver.py"
  driver.write_text(DRIVER)
  env = dict(os.environ, TOKENLAB_DATA_DIR=str(tmp_path / "data"), JAX_PLATFORMS="cpu",
             XLA_FLAGS=("--xla_force_host_platform_device_count=4 "
                        "--xla_backend_optimization_level=0"), PYTHONUNBUFFERED="1")
  for k in ("TOKENLAB_COORDINATOR", "TOKENLAB_NUM_PROCESSES", "TOKENLAB_PROCESS_ID"):
    env.pop(k, None)
  one, two = tmp_path / "one", tmp_path / "two"
  ref = subprocess.Popen([sys.executable, str(driver), str(one), "equivalence"], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  mp = subprocess.run([sys.executable, "launch/local.py", "--processes", "2",
                       "--devices-per-process", "2", "--timeout", "200", "--",
                       sys.executable, str(driver), str(two), "disjoint"],
                      cwd=REPO, env=env, capture_output=True, text=True, timeout=230)
  ref_out = ref.communicate(timeout=200)[0].decode()
  assert ref.returncode == 0, ref_out[-3000:]
  assert mp.returncode == 0, mp.stdout[-3000:] + mp.stderr[-2000:]

  # Equivalence: same global batches and seed -> same losses, step for step.
  l1, l2 = _losses(one / "equivalence"), _losses(two / "equivalence")
  assert sorted(l1) == sorted(l2) == [1, 2, 3, 4, 5]
  a, b = np.array([l1[s] for s in sorted(l1)]), np.array([l2[s] for s in sorted(l2)])
  assert np.all(np.isfinite(a))
  np.testing.assert_allclose(b, a, rtol=1e-5)
  # The losses move (a frozen model would match trivially).
  assert abs(a[-1] - a[0]) > 1e-3

  # Disjointness of what each process fed from the real pipeline.
  info = [json.loads((two / f"rows_{p}.json").read_text()) for p in (0, 1)]
  for i in info:
    assert (i["process_count"], i["devices"], i["local_devices"]) == (2, 4, 2)
    # 5 batches of the per-process batch (global 8 / 2 processes).
    assert len(i["rows"]) == 5 and all(len(r) == 4 for r in i["rows"])
  rows0 = {h for step in info[0]["rows"] for h in step}
  rows1 = {h for step in info[1]["rows"] for h in step}
  assert len(rows0) == 20 and len(rows1) == 20
  assert not rows0 & rows1
  method0 = {h for step in info[0]["method_rows"] for h in step}
  method1 = {h for step in info[1]["method_rows"] for h in step}
  assert len(method0) == 20 and len(method1) == 20
  assert not method0 & method1
  # Output of both processes came through the launcher with its prefix.
  assert "[p0]" in mp.stdout and "[p1]" in mp.stdout
