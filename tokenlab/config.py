"""Experiment configs: load an experiment file, apply command-line overrides, validate.

An experiment is a Python file with ``get_config(arg: str | None) -> ConfigDict`` (the
ml-collections / big_vision convention). It is named on the command line as
``experiments/transformer_lm.py:size=tiny``; the part after ``:`` is passed to ``get_config``
and is usually parsed with :func:`parse_arg`. Overrides ``--config.a.b=value`` set existing
keys only: a misspelled key fails before any compute, naming the nearest valid key.

Every experiment starts from :func:`base_config`, which holds the keys that tools rely on.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any

import ml_collections
from ml_collections import ConfigDict

from tokenlab.errors import ConfigError, nearest

# Logical axis -> mesh axes (t5x / MaxText style). `batch` is split over every data-parallel
# axis; parameters are sharded over `fsdp` along their embed dimension and over `tensor`
# along heads / mlp / vocab.
DEFAULT_SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("layers", None),
)


def base_config() -> ConfigDict:
  """The keys every experiment has; experiment files fill in model and data."""
  c = ConfigDict()
  c.seed = 0
  c.resume = ""                 # "force": resume a workdir whose config differs (kept as backup)
  c.train = ConfigDict(dict(
      steps=1000,
      batch_size=32,            # global, across all processes
      grad_accum_steps=1,       # micro-batches per step
      log_every=50,
      eval_every=500,           # 0 = only at the end
      eval_batches=20,          # 0 = the whole validation split
      clip_grad_norm=1.0,       # 0 = off
      on_nonfinite="halt",      # halt: stop, keeping the last good checkpoint; skip: drop update
      max_skipped_fraction=0.1,  # skip: fail when more of the run's steps than this are dropped
      param_dtype="float32",
      compute_dtype="float32",  # e.g. bfloat16 for mixed precision
      progress=True,
      init_from="",             # workdir whose latest parameters start a fresh run (fine-tuning)
      freeze="",                # regex over parameter paths ('a/b/c') that get no updates
  ))
  c.checkpoint = ConfigDict(dict(every_steps=500, keep=3, async_save=True))
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Slices each mesh axis spans over the data-center network (multi-slice pods; tokenlab/train/
  # mesh.py): e.g. mesh_dcn.data=2 on 2 slices; launch/gke.py --num-slices sets it.
  c.mesh_dcn = ConfigDict(dict(data=1, fsdp=1, tensor=1))
  c.sharding_rules = DEFAULT_SHARDING_RULES
  c.optimizer = ConfigDict(dict(
      name="adamw", lr=3e-4, schedule="cosine", warmup_steps=100, min_lr_ratio=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1))
  c.model = ConfigDict(dict(name=""))
  c.data = ConfigDict(dict(name=""))
  return c


def set_schedule(c: ConfigDict, *, steps: int, batch_size: int, lr: float, logs: int = 50,
                 evals: int = 4, checkpoints: int = 4, warmup_fraction: float = 0.05) -> None:
  """Sets the step budget and the cadences that follow from it (logs / evals / checkpoints
  per run, warm-up as a fraction of the run), so experiment files state only the budget."""
  c.train.steps = steps
  c.train.batch_size = batch_size
  c.train.log_every = max(steps // logs, 1)
  c.train.eval_every = max(steps // evals, 1)
  c.checkpoint.every_steps = max(steps // checkpoints, 1)
  c.optimizer.lr = lr
  c.optimizer.warmup_steps = max(int(steps * warmup_fraction), 1)


def set_accelerator_defaults(c: ConfigDict) -> None:
  """What the accelerator-sized variants share: bfloat16 compute over float32 master weights
  and parameters sharded over all devices (FSDP)."""
  c.train.compute_dtype = "bfloat16"
  c.mesh.data, c.mesh.fsdp = 1, -1


def set_time_sharding(c: ConfigDict, devices: int = 2) -> None:
  """Splits video clips over a mesh axis `time` of `devices` devices as well as the batch.

  The batch's `video` field is (batch, time, height, width, channels)
  (partitioning.BATCH_FIELD_AXES); the rule ('time', 'time') splits its frames, and
  ('length', 'time') keeps a video transformer's token axis split the same way inside the
  model (tokens are time-major, t*h*w, so equal contiguous blocks of the length are blocks
  of latent frames; with_logical_constraint(..., ('batch', 'length', 'embed')) holds them
  there). The batch keeps its data/fsdp axes over the other devices; frames, latent frames
  and token counts must be multiples of `devices`.
  """
  with c.unlocked():   # a loaded config is locked: new mesh keys need it open
    c.mesh.time = devices
    c.mesh_dcn.time = 1
    kept = tuple((k, v) for k, v in c.sharding_rules if k not in ("length", "time"))
    c.sharding_rules = kept + (("length", "time"), ("time", "time"))


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses 'size=tiny,window=64' into a ConfigDict over `defaults` (types follow defaults)."""
  out = ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    if "=" not in item:
      raise ConfigError(f"config argument '{item}' must look like key=value (e.g. size=tiny)")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise ConfigError(f"unknown config argument '{key}'{nearest(key, defaults)}; "
                        f"valid: {', '.join(sorted(defaults))}")
    out[key] = _parse_value(value, defaults[key], key)
  return out


def choose(name: str, value: str, options: dict) -> Any:
  """options[value], or a ConfigError listing the valid variants of argument `name`."""
  if value not in options:
    raise ConfigError(f"unknown {name}='{value}'{nearest(str(value), map(str, options))}; "
                      f"valid: {', '.join(map(str, options))}")
  return options[value]


# Names users reach for that mean a key with another name.
_SYNONYMS = {"learning_rate": "lr", "num_steps": "steps", "max_steps": "steps",
             "batch": "batch_size", "global_batch_size": "batch_size", "seqlen": "seq_len",
             "sequence_length": "seq_len", "dataset": "name"}


def shipped_experiments() -> dict[str, str]:
  """{file name: path} of the experiment files shipped with tokenlab (package
  `tokenlab.experiments`, the top-level `experiments/` folder of the checkout)."""
  from importlib import resources
  root = resources.files("tokenlab.experiments")
  return {p.name: str(p) for p in sorted(root.iterdir(), key=lambda p: p.name)
          if p.name.endswith(".py") and not p.name.startswith("_")}


def resolve_experiment(spec: str) -> str:
  """'path.py[:arg]' -> the same spec with a path that exists.

  A file that exists (relative to the working directory, or absolute) is used as given, so a
  user's own experiment always wins. Otherwise 'experiments/NAME.py' (or 'NAME.py', 'NAME')
  names an experiment shipped with tokenlab, found from the installed package wherever the
  command runs. Raises ConfigError listing the shipped experiments when neither exists.
  """
  path, sep, arg = spec.partition(":")
  if os.path.isfile(path):
    return spec
  head, name = os.path.split(path)
  if head in ("", "experiments"):
    shipped = shipped_experiments()
    key = name if name.endswith(".py") else name + ".py"
    if key in shipped:
      return shipped[key] + sep + arg
    hint = nearest(key, shipped)
  else:
    hint = ""
  raise ConfigError(f"experiment file '{path}' not found{hint}; give a path to your own "
                    f"experiment file, or one shipped with tokenlab: "
                    f"{', '.join('experiments/' + n for n in shipped_experiments())}")


def split_overrides(args: list[str]) -> list[str]:
  """Command-line words -> ['--config.a.b=value', ...].

  Accepts '--config.a.b=value' and the space form '--config.a.b value' (as ml-collections'
  config_flags does); anything else is refused with the form to use.
  """
  out, i = [], 0
  while i < len(args):
    item = args[i]
    if not item.startswith("--config."):
      raise ConfigError(f"unrecognised argument '{item}'; config overrides look like "
                        f"--config.train.steps=100")
    if "=" not in item:
      if i + 1 >= len(args) or args[i + 1].startswith("--"):
        raise ConfigError(f"override '{item}' has no value; write {item}=VALUE")
      item = f"{item}={args[i + 1]}"
      i += 1
    out.append(item)
    i += 1
  return out


ENV_OVERRIDES = "TOKENLAB_CONFIG_OVERRIDES"


def env_overrides() -> list[str]:
  """Overrides from $TOKENLAB_CONFIG_OVERRIDES ('train.steps=2 train.eval_batches=1'),
  applied after the command line's, to every config loaded: one place to shrink every run of
  a script or a README (smoke tests, CI) without editing its commands. Announced on stderr."""
  import shlex
  import sys
  words = shlex.split(os.environ.get(ENV_OVERRIDES, ""))
  if words:
    print(f"tokenlab: ${ENV_OVERRIDES} applies {' '.join(words)}", file=sys.stderr)
  return [w if w.startswith("--config.") else f"--config.{w}" for w in words]


def load_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ConfigDict:
  """Loads 'path/to/experiment.py[:arg]' (a user's file, or a shipped experiment by name; see
  `resolve_experiment`), applies overrides 'a.b=value', validates keys."""
  path, _, arg = resolve_experiment(spec).partition(":")
  overrides = list(overrides) + env_overrides()
  module_spec = importlib.util.spec_from_file_location(f"_tokenlab_exp_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:   # one line naming file, line and column (IndentationError too)
    raise ConfigError(f"{e.filename or path}:{e.lineno}:{e.offset}: {type(e).__name__}: "
                      f"{e.msg}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"experiment file '{path}' has no get_config(arg) function")
  config = module.get_config(arg or None)
  _check_base_keys(config, path)
  apply_overrides(config, overrides)
  config.lock()
  return config


def _check_base_keys(config: ConfigDict, path: str) -> None:
  base = flatten(base_config())
  have = flatten(config)
  missing = [k for k in base if k not in have and not k.startswith(("model.", "data."))]
  if missing:
    raise ConfigError(f"experiment '{path}' lacks keys {missing[:5]}; start it from "
                      f"tokenlab.config.base_config()")


def apply_overrides(config: ConfigDict, overrides: list[str] | tuple[str, ...]) -> None:
  """Sets 'a.b.c=value' entries on `config` in place; only existing keys may be set."""
  for item in overrides:
    item = item[len("--config."):] if item.startswith("--config.") else item
    item = item[len("config."):] if item.startswith("config.") else item
    if "=" not in item:
      raise ConfigError(f"override '{item}' must look like --config.a.b=value")
    key, value = item.split("=", 1)
    set_path(config, key, value)


def set_path(config: ConfigDict, key: str, raw: str) -> None:
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    valid = list(node.keys()) if isinstance(node, ConfigDict) else []
    if part not in valid:
      full = ".".join(parts[:i + 1])
      if _SYNONYMS.get(part) in valid:
        hint = f" (did you mean '{'.'.join(parts[:i] + [_SYNONYMS[part]])}'?)"
      else:
        options = {".".join(k.split(".")[:i + 1]) for k in flatten(config)
                   if k.count(".") >= i}
        hint = nearest(full, options)
      raise ConfigError(f"unknown config key '{full}'{hint}")
    if i == len(parts) - 1:
      with node.unlocked() if node.is_locked else _null():
        node[part] = _parse_value(raw, node[part], key)
    else:
      node = node[part]


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def _parse_value(raw: str, current: Any, key: str) -> Any:
  """Parses `raw` to the type of the current value (bool/int/float/str/tuple/None)."""
  try:
    if isinstance(current, bool):
      if raw.lower() in ("true", "1", "yes"):
        return True
      if raw.lower() in ("false", "0", "no"):
        return False
      raise ValueError
    if isinstance(current, int):
      return int(raw)
    if isinstance(current, float):
      return float(raw)
    if isinstance(current, str):
      return raw
    if isinstance(current, ConfigDict):
      raise ConfigError(f"'{key}' is a group of keys; set one of its keys: "
                        f"{', '.join(sorted(current.keys()))}")
    value = ast.literal_eval(raw)
    if isinstance(current, (tuple, list)) and isinstance(value, list):
      value = tuple(value)
    return value
  except (ValueError, SyntaxError):
    if current is None:
      return raw
    raise ConfigError(f"cannot parse '{raw}' for '{key}' (expected {type(current).__name__})")


def flatten(config: ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  """{'a.b': value} for every leaf of a nested config."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ConfigDict, dict)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def to_json(config: ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ConfigDict:
  return ConfigDict(json.loads(text))


def config_diff(a: ConfigDict, b: ConfigDict) -> list[str]:
  """Keys whose values differ between two configs (tuples and lists compare equal)."""
  fa, fb = flatten(json.loads(to_json(a))), flatten(json.loads(to_json(b)))
  return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>"))


__all__ = ["base_config", "parse_arg", "choose", "set_schedule", "set_accelerator_defaults", "load_config", "apply_overrides", "flatten", "to_json",
           "from_json", "config_diff", "DEFAULT_SHARDING_RULES", "ml_collections"]
