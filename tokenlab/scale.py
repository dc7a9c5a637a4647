"""`tokenlab scale`: scaling studies (mesh shape, model size, DP vs FSDP) into a CSV and plots.

  tokenlab scale --config experiments/transformer_lm.py --sweep 'mesh.data=1,2,4' \\
      --sweep 'model.size=tiny,small' --steps 20 --out runs/scale
  tokenlab scale --config experiments/transformer_lm.py:size=small --sweep devices=1,2,4 \\
      --compare --steps 20 --out runs/dp_vs_fsdp

Every point of the cartesian product of the sweeps runs in its own subprocess with the right
number of fake CPU devices (`--xla_force_host_platform_device_count`), for `--steps` steps of
the real trainer (`tokenlab.train.loop.train`), or of the explicit data-parallel step of
`tokenlab.train.dp_shard_map` for `mode=dp_shard_map`. Sweep keys:

* `devices=...`: the device count; without it, the product of the point's mesh sizes
  (-1 counts as 1).
* `model.size=...` (or `size=...`, `arg.K=...`, any key without a dot): the experiment's
  `:K=value` argument, e.g. `:size=tiny`.
* `topology=v5e:2x2,v5e:4x4,...` (and optionally `num_slices=1,2`): a compile-only study for
  TPU pods without a TPU: each point compiles the real train step for that libtpu topology
  with the TPU compiler (`tokenlab plan --topology`) and records per-chip memory, whether it
  fits HBM, and the roofline bounds (step-time lower bound, MFU and tokens/s upper bounds,
  from published chip figures: estimates, not measurements). Nothing trains; `--steps` is
  ignored. Combine with model or mesh sweeps (mesh shape x model size -> memory per chip).
* `mode=jit|fsdp|dp_shard_map`: `jit` (default) runs the config's mesh as given; `fsdp`
  reshapes the point's devices into `fsdp=-1` (every other axis 1); `dp_shard_map` runs
  replicated parameters with one gradient psum. `--compare` = `--sweep mode=fsdp,dp_shard_map`.
* anything else (`mesh.data`, `train.batch_size`, ...): a `--config.KEY=value` override.

Results: OUT/scaling.csv (one row per point, failures included with their error) and
OUT/scaling.png (step time, tokens/s, MFU and XLA's per-device peak memory against the device
count). By default batches are synthetic (random tokens of the data config's shape), so the
study times the model step rather than the input pipeline; `--data real` uses the pipeline.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Iterator

from tokenlab import config as config_lib
from tokenlab.argparsing import Parser
from tokenlab.errors import ConfigError, TokenlabError

MODES = ("jit", "fsdp", "dp_shard_map")
CSV_FIELDS = ("name", "mode", "devices", "mesh", "status", "num_params", "global_batch",
              "seq_len", "tokens_per_step", "step_time_ms", "step_time_best_ms", "tokens_per_sec",
              "mfu",
              "final_loss", "mem_peak_per_device_mib", "mem_temp_per_device_mib",
              "mem_state_per_device_mib", "max_rss_mib", "compile_sec", "wall_sec",
              # compile-only topology points (estimates from published chip figures)
              "hbm_per_device_mib", "fits_hbm", "step_time_lower_bound_ms", "bound_by",
              "mfu_upper_bound", "tokens_per_sec_upper_bound", "error")
COMPILE_ONLY_KEYS = ("topology", "num_slices")
_OUT_OF_HBM = re.compile(r"required for HLO temporaries \(([\d.]+)G\) exceeds available "
                         r"HBM \(([\d.]+)G\)")


# ----------------------------------------------------------------------------- sweeps


def parse_sweep(item: str) -> tuple[str, list[str]]:
  """'mesh.data=1,2,4' -> ('mesh.data', ['1', '2', '4'])."""
  key, sep, values = item.partition("=")
  key = key.strip()
  key = key[len("config."):] if key.startswith("config.") else key
  vals = [v.strip() for v in values.split(",") if v.strip()]
  if not sep or not key or not vals:
    raise ConfigError(f"--sweep '{item}' must look like KEY=v1,v2 (e.g. mesh.data=1,2,4)")
  if key == "num_slices" and not all(v.isdigit() and int(v) >= 1 for v in vals):
    raise ConfigError(f"--sweep num_slices={values}: slice counts are integers >= 1")
  if key == "mode":
    for v in vals:
      if v not in MODES:
        raise ConfigError(f"--sweep mode={v}: unknown mode; use one of {', '.join(MODES)}")
  return key, vals


def _is_arg_key(key: str) -> bool:
  return key == "model.size" or key.startswith("arg.") or (
      "." not in key and key not in ("devices", "mode", *COMPILE_ONLY_KEYS))


def _arg_name(key: str) -> str:
  return "size" if key == "model.size" else key[len("arg."):] if key.startswith("arg.") else key


def merge_arg(spec: str, updates: dict[str, str]) -> str:
  """'exp.py:size=small,data=x' + {'size': 'tiny'} -> 'exp.py:size=tiny,data=x'."""
  path, _, arg = spec.partition(":")
  items = dict(kv.split("=", 1) for kv in arg.split(",") if "=" in kv)
  items.update(updates)
  return path + (":" + ",".join(f"{k}={v}" for k, v in items.items()) if items else "")


def expand(sweeps: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
  """The cartesian product of the sweeps, first sweep outermost."""
  if not sweeps:
    return [{}]
  keys = [k for k, _ in sweeps]
  return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in sweeps))]


def _mesh_devices(mesh: dict[str, int]) -> int:
  n = 1
  for v in mesh.values():
    n *= max(int(v), 1)
  return n


def resolve_point(config_spec: str, values: dict[str, str], overrides: list[str]
                  ) -> dict[str, Any]:
  """What one point runs: experiment spec, overrides, device count and mode.

  Loads the config (cheap: no jax backend starts) to check the keys and read the mesh.
  """
  from tokenlab.config import load_config
  arg_updates = {_arg_name(k): v for k, v in values.items() if _is_arg_key(k)}
  spec = merge_arg(config_spec, arg_updates)
  point_overrides = list(overrides) + [
      f"--config.{k}={v}" for k, v in values.items()
      if not _is_arg_key(k) and k not in ("devices", "mode", *COMPILE_ONLY_KEYS)]
  config = load_config(spec, point_overrides)
  mesh = {str(k): int(v) for k, v in dict(config.mesh).items()}
  mode = values.get("mode", "jit")
  if "topology" in values:
    if "devices" in values or mode != "jit":
      raise ConfigError("a topology point compiles for that topology's chips: do not sweep "
                        "devices or mode with topology")
    devices = 0   # the topology's chip count, filled in by the point's run
  elif "devices" in values:
    devices = int(values["devices"])
  else:
    devices = _mesh_devices(mesh)
  if devices < 1 and "topology" not in values:
    raise ConfigError(f"sweep point {values}: device count must be >= 1")
  if mode == "fsdp":
    if "fsdp" not in mesh:
      raise ConfigError("mode=fsdp needs a 'fsdp' axis in config.mesh")
    point_overrides += [f"--config.mesh.{a}={-1 if a == 'fsdp' else 1}" for a in mesh]
  name = "_".join(f"{k.split('.')[-1]}{v}" for k, v in values.items()) or "point"
  name = re.sub(r"[^A-Za-z0-9_.=-]", "-", name)
  return {"name": name, "values": values, "spec": spec, "overrides": point_overrides,
          "devices": devices, "mode": mode, "topology": values.get("topology", ""),
          "num_slices": int(values.get("num_slices", 1))}


# ----------------------------------------------------------------------------- child


class SyntheticBatches:
  """Random-token batches of the data config's shape; checkpointable like a grain iterator.

  inputs/targets are one random token stream shifted by one; positions count from 0; masks,
  segment ids and other integer fields are 1; other float fields (images) are N(0, 1). Batch i of process p depends only on (seed, p, i).
  """

  def __init__(self, config, batch_size: int, seed: int, process_index: int = 0):
    from tokenlab.plan import batch_spec
    self._spec = batch_spec(config, batch_size)
    self._vocab = int(config.model.get("vocab_size", 256))
    self._seed, self._process, self._step = seed, process_index, 0

  def __iter__(self) -> "SyntheticBatches":
    return self

  def __next__(self) -> dict[str, Any]:
    import numpy as np
    rng = np.random.default_rng((self._seed, self._process, self._step))
    self._step += 1
    out = {}
    shape = next(iter(self._spec.values())).shape
    tokens = rng.integers(0, self._vocab, (shape[0], shape[1] + 1)) if len(shape) == 2 else None
    for k, s in self._spec.items():
      if k == "inputs" and tokens is not None:
        out[k] = tokens[:, :-1].astype(s.dtype)
      elif k == "targets" and tokens is not None:
        out[k] = tokens[:, 1:].astype(s.dtype)
      elif k == "positions":
        out[k] = np.broadcast_to(np.arange(s.shape[-1]), s.shape).astype(s.dtype)
      elif "mask" in k:
        out[k] = np.ones(s.shape, s.dtype)
      elif np.issubdtype(s.dtype, np.floating):
        out[k] = rng.standard_normal(s.shape).astype(s.dtype)
      else:
        out[k] = np.ones(s.shape, s.dtype)
    return out

  # grain's checkpoint handler stores a non-grain iterator's state as bytes.
  def get_state(self) -> bytes:
    return json.dumps({"step": self._step}).encode()

  def set_state(self, state: bytes) -> None:
    self._step = int(json.loads(state)["step"])

  def start_prefetch(self) -> None:
    """Called by grain's handler after a restore; nothing to prefetch."""


def _child(point_path: str) -> int:
  """Runs one point (in a process that already has the right device count)."""
  import resource

  with open(point_path) as f:
    point = json.load(f)
  out = {"status": "ok"}
  t0 = time.perf_counter()
  try:
    out.update(_run_point_here(point))
  except Exception as e:  # Recorded in the CSV; the sweep goes on.
    out["status"] = "failed"
    out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
  out["wall_sec"] = time.perf_counter() - t0
  out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  with open(point["result_path"], "w") as f:
    json.dump(out, f, indent=2, default=float)
  return 0 if out["status"] == "ok" else 1


def _run_topology_point(point: dict[str, Any]) -> dict[str, Any]:
  """Compiles the train step for the point's TPU topology; memory and roofline bounds."""
  from tokenlab.config import load_config
  from tokenlab.plan import make_plan

  config = load_config(point["spec"], list(point["overrides"]))
  try:
    plan = make_plan(config, None, top=0, topology=point["topology"],
                     num_slices=point["num_slices"])
  except Exception as e:  # noqa: BLE001
    oom = _OUT_OF_HBM.search(str(e))
    if not oom:
      raise
    # The TPU compiler refuses a program whose temporaries exceed HBM and says how much it
    # needed: a result of the study (does not fit), not a failure of the point.
    need, have = (float(g) * 2**10 for g in oom.groups())   # its "G" is GiB; into MiB
    from tokenlab.topology import get_topology
    chips = len(get_topology(point["topology"], point["num_slices"]).devices)
    return {"status": "does not fit", "devices": chips, "fits_hbm": False, "mem_temp_per_device_mib": need,
            "hbm_per_device_mib": have, "error": str(e).splitlines()[0][:300]}
  pd, roof = plan["per_device"], plan["roofline"]
  (chip, fit), = plan["fits"].items()
  seq_len = int(config.data.get("seq_len", 1))
  tokens = config.train.batch_size * seq_len
  bound = roof["step_time_lower_bound_s"]
  return {"devices": plan["devices"], "mesh": json.dumps(plan["mesh"]),
          "num_params": plan["num_params"], "global_batch": config.train.batch_size,
          "seq_len": seq_len, "tokens_per_step": tokens, "compile_sec": plan["compile_sec"],
          "mem_peak_per_device_mib": pd["peak"] / 2**20,
          "mem_temp_per_device_mib": pd["xla_temp"] / 2**20,
          "mem_state_per_device_mib": (pd["params"] + pd["opt_state"]) / 2**20,
          "hbm_per_device_mib": fit["hbm_bytes"] / 2**20, "fits_hbm": fit["fits"],
          "step_time_lower_bound_ms": 1e3 * bound, "bound_by": roof["bound_by"],
          "mfu_upper_bound": roof["mfu_upper_bound"],
          "tokens_per_sec_upper_bound": tokens / bound if bound > 0 else float("nan")}


def _run_point_here(point: dict[str, Any]) -> dict[str, Any]:
  if point.get("topology"):
    return _run_topology_point(point)
  import jax
  import numpy as np

  from tokenlab.config import load_config
  from tokenlab.plan import make_plan
  from tokenlab.train.metrics import read_metrics

  steps = int(point["steps"])
  fixed = [f"--config.train.steps={steps}", f"--config.train.log_every={point['log_every']}",
           "--config.train.eval_every=0", "--config.train.eval_batches=1",
           f"--config.checkpoint.every_steps={steps}", "--config.checkpoint.async_save=false",
           "--config.train.progress=false"]
  config = load_config(point["spec"], list(point["overrides"]) + fixed)
  devices = jax.devices()[:point["devices"]]
  if len(devices) < point["devices"]:
    raise TokenlabError(f"jax sees {len(jax.devices())} devices, need {point['devices']}")
  seq_len = int(config.data.get("seq_len", 1))
  res: dict[str, Any] = {"global_batch": config.train.batch_size, "seq_len": seq_len,
                         "tokens_per_step": config.train.batch_size * seq_len}
  synthetic = point["data"] == "synthetic"
  make_it = lambda bs, seed: SyntheticBatches(config, bs, seed, jax.process_index())

  if point["mode"] == "dp_shard_map":
    from tokenlab.train.dp_shard_map import train_dp
    if synthetic:
      it = make_it(config.train.batch_size, config.seed)
    else:
      from tokenlab.train.loop import _default_iterators
      it = _default_iterators(config)[0](config.train.batch_size, config.seed)
    r = train_dp(config, steps=steps, train_iter=it, devices=devices)
    mem = r["memory"]
    res.update(mesh=json.dumps({"data": len(devices)}), num_params=r["num_params"],
               step_time_ms=1e3 * r["step_time_sec"],
               step_time_best_ms=1e3 * r["step_time_best_sec"],
               tokens_per_sec=r["tokens_per_sec"],
               mfu=r["mfu"], final_loss=r["losses"][-1], compile_sec=r["compile_sec"],
               mem_peak_per_device_mib=mem.get("peak", 0) / 2**20,
               mem_temp_per_device_mib=mem.get("temp", 0) / 2**20,
               mem_state_per_device_mib=mem.get("argument", 0) / 2**20)
    return res

  if len(jax.devices()) != point["devices"]:
    raise TokenlabError("the trainer uses every device; run the point in its own process")
  from tokenlab.train.loop import train
  # Synthetic studies skip evaluation (an empty eval iterator compiles nothing): they time
  # training steps, and eval time is excluded from the step time anyway.
  kw = ({"train_iter_fn": make_it, "eval_iter_fn": lambda batch_size, seed: iter(())}
        if synthetic else {})
  train(config, point["workdir"], **kw)
  rows = read_metrics(point["workdir"])
  perf = [r for r in rows if "perf/steps_per_sec" in r]
  steady = perf[1:] or perf  # The first window still warms caches.
  steps_per_sec = float(np.mean([r["perf/steps_per_sec"] for r in steady]))
  info = {k: v for r in rows for k, v in r.items()}
  plan = make_plan(config, point["devices"], top=0)
  pd = plan["per_device"]
  res.update(mesh=json.dumps(plan["mesh"]), num_params=plan["num_params"],
             step_time_ms=1e3 / steps_per_sec,
             # The fastest logged window: less sensitive to other load on a shared host.
             step_time_best_ms=1e3 / max(r["perf/steps_per_sec"] for r in steady),
             tokens_per_sec=float(np.mean([r["perf/tokens_per_sec"] for r in steady])),
             mfu=float(np.mean([r["perf/mfu"] for r in steady])),
             final_loss=perf[-1].get("train/loss", float("nan")),
             compile_sec=info.get("perf/compile_sec", float("nan")),
             mem_peak_per_device_mib=pd["peak"] / 2**20,
             mem_temp_per_device_mib=pd["xla_temp"] / 2**20,
             mem_state_per_device_mib=(pd["params"] + pd["opt_state"]) / 2**20)
  return res


# ----------------------------------------------------------------------------- parent


def run_point(point: dict[str, Any], out_dir: str, timeout: float, reuse: bool = False
              ) -> dict[str, Any]:
  """Runs `point` in a subprocess with its device count; returns its CSV row.

  `reuse`: a point whose earlier run in `out_dir` had the same definition and a result
  (ok or does not fit) is not run again; its recorded result is the row.
  """
  from tokenlab.plan import _with_device_count
  pdir = os.path.join(out_dir, "points", point["name"])
  os.makedirs(pdir, exist_ok=True)
  point = dict(point, workdir=os.path.join(pdir, "workdir"),
               result_path=os.path.join(pdir, "result.json"))
  row: dict[str, Any] = {"name": point["name"], "mode": point["mode"],
                         "devices": point["devices"], **point["values"]}
  if reuse and os.path.exists(point["result_path"]):
    with open(os.path.join(pdir, "point.json")) as f:
      same = json.load(f) == json.loads(json.dumps(point))
    with open(point["result_path"]) as f:
      result = json.load(f)
    if same and result.get("status") in ("ok", "does not fit"):
      return {**row, **result, "reused": True}
  if os.path.exists(point["workdir"]):
    import shutil
    shutil.rmtree(point["workdir"])  # A study measures fresh runs, never a resume.
  with open(os.path.join(pdir, "point.json"), "w") as f:
    json.dump(point, f, indent=2)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # A topology point compiles for libtpu's topology devices: one host device is enough.
  env["XLA_FLAGS"] = _with_device_count(env.get("XLA_FLAGS", ""), point["devices"] or 1)
  for k in ("TOKENLAB_COORDINATOR", "TOKENLAB_NUM_PROCESSES", "TOKENLAB_PROCESS_ID"):
    env.pop(k, None)
  with open(os.path.join(pdir, "log.txt"), "w") as log:
    try:
      subprocess.run([sys.executable, "-m", "tokenlab.scale", "--_child",
                      os.path.join(pdir, "point.json")], env=env, stdout=log,
                     stderr=subprocess.STDOUT, timeout=timeout or None, check=False)
    except subprocess.TimeoutExpired:
      row.update(status="failed", error=f"timed out after {timeout:.0f} s")
      return row
  if not os.path.exists(point["result_path"]):
    row.update(status="failed", error=f"no result; see {pdir}/log.txt")
    return row
  with open(point["result_path"]) as f:
    row.update(json.load(f))
  return row


def write_csv(rows: list[dict[str, Any]], path: str, sweep_keys: list[str]) -> None:
  fields = list(CSV_FIELDS[:3]) + [k for k in sweep_keys if k not in ("mode", "devices")]
  fields += [f for f in CSV_FIELDS[3:]]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: _fmt(r.get(k, "")) for k in fields})


def _fmt(v: Any) -> Any:
  return f"{v:.6g}" if isinstance(v, float) else v


def _float(v: Any) -> float:
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


def read_csv(path: str) -> list[dict[str, Any]]:
  """Rows of a scaling.csv (values as strings, as `plot` accepts them)."""
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


TRAIN_PANELS = [("step_time_ms", "step time (ms)"), ("tokens_per_sec", "tokens / s"),
                ("mfu", "MFU (vs measured host matmul peak)"),
                ("mem_peak_per_device_mib", "XLA peak memory per device (MiB)")]
TOPOLOGY_PANELS = [("step_time_lower_bound_ms", "step time, lower bound (ms; estimate)"),
                   ("tokens_per_sec_upper_bound", "tokens / s, upper bound (estimate)"),
                   ("mfu_upper_bound", "MFU upper bound (estimate)"),
                   ("mem_peak_per_device_mib", "TPU-compiler peak memory per chip (MiB)")]


def plot(rows: list[dict[str, Any]], path: str, sweep_keys: list[str], title: str = "") -> str:
  """2x2 PNG against devices (chips), a line per group: step time, tokens/s, MFU, per-device
  peak memory; for a topology study their roofline bounds and the TPU compiler's memory, with
  the chip's HBM as a dashed line."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  topo = "topology" in sweep_keys
  group_keys = [k for k in sweep_keys if k not in ("devices", "topology")
                and not k.startswith("mesh.")]
  if "mode" not in group_keys and len({r["mode"] for r in rows}) > 1:
    group_keys.append("mode")
  ok = [r for r in rows if r.get("status") == "ok"]
  groups: dict[str, list[dict]] = {}
  for r in ok:
    label = ", ".join(f"{k.split('.')[-1]}={r.get(k, r.get(k.split('.')[-1], ''))}"
                      for k in group_keys) or r["mode"]
    groups.setdefault(label, []).append(r)
  panels = TOPOLOGY_PANELS if topo else TRAIN_PANELS
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  devices = sorted({int(r["devices"]) for r in rows
                    if r.get("status") in ("ok", "does not fit") and str(r["devices"]) != "0"})
  for ax, (key, label) in zip(axes.flat, panels):
    values = []
    for name, rs in sorted(groups.items()):
      rs = sorted(rs, key=lambda r: int(r["devices"]))
      xs = [int(r["devices"]) for r in rs]
      ys = [_float(r.get(key)) * (100 if key.startswith("mfu") else 1) for r in rs]
      values += [y for y in ys if y == y and y > 0]
      ax.plot(xs, ys, marker="o", label=name)
    if topo and key.startswith("mem"):
      over = [r for r in rows if r.get("status") == "does not fit"]
      if over:   # the compiler's stated need, where it refused to compile
        ax.scatter([int(r["devices"]) for r in over],
                   [_float(r["mem_temp_per_device_mib"]) for r in over], marker="x",
                   color="red", label="does not fit (temporaries needed)")
        values += [_float(r["mem_temp_per_device_mib"]) for r in over]
        ax.legend(fontsize=8)
      hbm = sorted({_float(r.get("hbm_per_device_mib")) for r in ok + over})
      for h in hbm:
        ax.axhline(h, color="gray", linestyle="--", linewidth=1)
      if hbm:
        ax.text(devices[0], hbm[-1], " HBM per chip", va="bottom", fontsize=8)
      values += hbm
    ax.set_xlabel("TPU chips" if topo else "devices")
    ax.set_ylabel(label + (" (%)" if key.startswith("mfu") else ""))
    if len(devices) > 1:
      ax.set_xscale("log", base=2)
    ax.set_xticks(devices, [str(d) for d in devices])
    ax.grid(alpha=0.3)
    if values and max(values) / min(values) > 20:  # e.g. memory across model sizes
      ax.set_yscale("log")
  axes.flat[0].legend(fontsize=8)
  fig.suptitle(title or "tokenlab scale")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def main(argv: list[str]) -> int:
  """`tokenlab scale ...`; exit status 0 when every point ran, 1 when some failed."""
  if argv[:1] == ["--_child"]:
    return _child(argv[1])
  parser = Parser(prog="tokenlab scale", description=__doc__.splitlines()[0],
                  epilog="example:\n  tokenlab scale --config experiments/transformer_lm.py:"
                         "size=tiny --sweep mesh.data=1,2,4 --steps 20 --out runs/scale\n")
  parser.add_argument("--config", default="experiments/transformer_lm.py:size=tiny")
  parser.add_argument("--sweep", action="append", default=[], help="KEY=v1,v2,... (repeat)")
  parser.add_argument("--compare", action="store_true",
                      help="add --sweep mode=fsdp,dp_shard_map (explicit DP vs jit FSDP)")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--log_every", type=int, default=0, help="default: steps // 4")
  parser.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
  parser.add_argument("--out", default="runs/scale")
  parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per point")
  parser.add_argument("--reuse", action="store_true",
                      help="keep the results of points already run into --out with the same "
                           "definition (resume a long study); run only the others")
  parser.add_argument("--plot-only", action="store_true",
                      help="redraw OUT/scaling.png from OUT/scaling.csv; run nothing")
  args, overrides = parser.parse_with_overrides(argv)
  if args.plot_only:
    csv_path = os.path.join(args.out, "scaling.csv")
    if not os.path.exists(csv_path):
      raise TokenlabError(f"{csv_path} not found; run the study into --out {args.out} first")
    rows = read_csv(csv_path)
    keys = [k for k in rows[0] if k not in CSV_FIELDS] if rows else []
    if len({r["mode"] for r in rows}) > 1:
      keys.append("mode")
    print(plot(rows, os.path.join(args.out, "scaling.png"), keys,
               title=f"tokenlab scale: {os.path.basename(os.path.abspath(args.out))}"))
    return 0
  sweeps = [parse_sweep(s) for s in args.sweep]
  if args.compare:
    if any(k == "mode" for k, _ in sweeps):
      raise ConfigError("--compare adds the mode sweep itself; drop --sweep mode=...")
    sweeps.append(("mode", ["fsdp", "dp_shard_map"]))
  keys = [k for k, _ in sweeps]
  if len(set(keys)) != len(keys):
    raise ConfigError(f"a key is swept twice in {keys}; give each key one --sweep")
  topology_study = any(k in COMPILE_ONLY_KEYS for k in keys)
  if topology_study and "topology" not in keys:
    raise ConfigError("--sweep num_slices needs --sweep topology=... too")
  if args.steps < 2 and not topology_study:
    raise ConfigError("--steps must be at least 2 (the first step is not timed)")
  spec = config_lib.resolve_experiment(args.config)
  points = [resolve_point(spec, values, overrides) for values in expand(sweeps)]
  log_every = args.log_every or max(args.steps // 4, 1)
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for i, point in enumerate(points):
    point.update(steps=args.steps, log_every=log_every, data=args.data)
    where = (f"topology {point['topology']} x {point['num_slices']} slices, compile only"
             if point["topology"] else f"{point['devices']} devices, mode {point['mode']}")
    print(f"[{i + 1}/{len(points)}] {point['name']}: {where}, {point['spec']} "
          f"{' '.join(point['overrides'])}", flush=True)
    row = run_point(point, args.out, args.timeout, reuse=args.reuse)
    if row.get("reused"):
      print("    (reused the result of an earlier run)", flush=True)
    rows.append(row)
    if row.get("status") == "ok" and point["topology"]:
      print(f"    {row['devices']} chips, peak {row['mem_peak_per_device_mib']:.0f} MiB/chip "
            f"(HBM {row['hbm_per_device_mib']:.0f}, fits {row['fits_hbm']}), step >= "
            f"{row['step_time_lower_bound_ms']:.3g} ms ({row['bound_by']}-bound), MFU <= "
            f"{100 * row['mfu_upper_bound']:.0f}% (estimates)", flush=True)
    elif row.get("status") == "does not fit":
      print(f"    does not fit: the TPU compiler needs {row['mem_temp_per_device_mib']:.0f} MiB "
            f"of temporaries per chip, HBM has {row['hbm_per_device_mib']:.0f}", flush=True)
    elif row.get("status") == "ok":
      print(f"    step {row['step_time_ms']:.1f} ms, {row['tokens_per_sec']:.0f} tokens/s, "
            f"MFU {100 * row['mfu']:.1f}%, peak {row['mem_peak_per_device_mib']:.1f} MiB/device"
            f", loss {row['final_loss']:.4f}", flush=True)
    else:
      print(f"    FAILED: {row.get('error')}", flush=True)
  csv_path = os.path.join(args.out, "scaling.csv")
  write_csv(rows, csv_path, keys)
  png = plot(rows, os.path.join(args.out, "scaling.png"), keys,
             title=(f"{args.config}: compiled for TPU topologies (libtpu), roofline estimates"
                    if topology_study else f"{args.config}, {args.steps} steps, {args.data} data"))
  print(f"wrote {csv_path} and {png}")
  return 0 if all(r.get("status") in ("ok", "does not fit") for r in rows) else 1


if __name__ == "__main__":
  from tokenlab.cli import main as cli_main
  sys.exit(cli_main(["scale", *sys.argv[1:]]))
