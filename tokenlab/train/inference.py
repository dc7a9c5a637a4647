"""Loading a trained run from its workdir for eval and sampling."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from tokenlab import config as config_lib
from tokenlab import registry
from tokenlab.errors import TokenlabError
from tokenlab.method import Method
from tokenlab.train import partitioning
from tokenlab.train.checkpoint import CheckpointDamaged, Checkpointer
from tokenlab.train.mesh import make_mesh
from tokenlab.train.optimizer import make_optimizer
from tokenlab.train.state import abstract_state, method_init_fn, state_layout


@dataclasses.dataclass
class TrainedRun:
  config: ConfigDict
  method: Method
  params: Any
  step: int
  mesh: Mesh
  rules: Any
  model_state: Any = None   # a stateful method's {collection: tree}; None when stateless


def load_config_from_workdir(workdir: str) -> ConfigDict:
  from etils import epath

  from tokenlab.train.workdir import join
  path = epath.Path(join(workdir, "config.json"))   # a local path or a gs://... URL
  if not path.exists():
    raise TokenlabError(f"{workdir} has no config.json; train into it first with "
                        f"`tokenlab train --config ... --workdir {workdir}`")
  return config_lib.from_json(path.read_text())


def load_trained(workdir: str, example_batch: dict[str, np.ndarray],
                 step: int | None = None) -> TrainedRun:
  """Restores the parameters of the latest (or given) checkpoint in `workdir`.

  `example_batch` gives the shapes the model is initialised with (any batch of the run's data).
  """
  config = load_config_from_workdir(workdir)
  mesh = make_mesh(config.mesh)
  rules = partitioning.rules_from_config(config.sharding_rules)
  method = registry.build_method(config.model)
  tx = make_optimizer(config.optimizer, config.train.steps, config.train.clip_grad_norm,
                      config.train.get("freeze", ""))
  from etils import epath

  from tokenlab.train.workdir import Workdir
  directory = Workdir(workdir).checkpoints
  if not epath.Path(directory).is_dir():
    raise TokenlabError(f"{workdir} has no checkpoints/ directory; train first")
  ckpt = Checkpointer(directory, async_save=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise TokenlabError(f"{workdir}/checkpoints holds no checkpoint yet; train first")
    if step is not None and step not in steps:
      raise TokenlabError(f"--step {step}: {workdir}/checkpoints has no checkpoint of step "
                          f"{step}; it has {', '.join(map(str, steps))}")
    example = {k: jnp.zeros(np.shape(v), np.asarray(v).dtype)
               for k, v in example_batch.items()}
    state_shapes, shardings = state_layout(method_init_fn(method, example), tx, mesh, rules,
                                           jnp.dtype(config.train.param_dtype))
    target = abstract_state(shardings, state_shapes)
    if step is None:   # the newest checkpoint that restores (damaged ones are skipped)
      state, step, _ = ckpt.restore_latest(target)
    else:
      try:
        state = ckpt.restore(step, target)
      except CheckpointDamaged as e:
        others = ", ".join(str(s) for s in steps if s != step) or "none"
        raise TokenlabError(f"--step {step}: checkpoint {directory}/{step} is damaged ({e}); "
                            f"the other checkpoints: {others}") from e
  finally:
    ckpt.close(quiet=True)
  return TrainedRun(config, method, state.params, int(step), mesh, rules, state.model_state)


@dataclasses.dataclass
class FrozenTokenizer:
  """A trained tokenizer (image, video, audio) bound to its weights, for other experiments.

  `encode(x) -> codes` and `decode(codes) -> x` call the method's `encode(variables, x)` /
  `decode(variables, codes)` with the run's variables (numpy arrays, so a jitted caller
  embeds them as constants, and gradients never reach them). What x is depends on the
  method: images (B, H, W, C) in [0, 1] -> codes (B, h, w[, G]) for image_tokenizer; video
  (B, T, H, W, C) in [0, 1] -> codes (B, t, h, w[, G]) for video_tokenizer; a
  `speech` batch or log-mel (B, T, M) -> codes (B, t[, K]) for audio_codec, whose decode
  gives log-mel back. `config` is the tokenizer run's config; `method` exposes e.g.
  `bits_per_token`, `codebook_size`, `grid`, `frame_rate_hz`.
  """
  config: ConfigDict
  method: Method
  variables: Any
  step: int

  def encode(self, x: Any) -> jax.Array:
    """The method's input (images (B, H, W, C) or video (B, T, H, W, C) in [0, 1], a speech
    batch, ...) -> int32 codes (B, h, w[, G]), (B, t, h, w[, G]), (B, t[, K]), ..."""
    return self.method.encode(self.variables, x)

  def decode(self, codes: Any) -> jax.Array:
    """codes -> the method's output space (images or video in [0, 1], log-mel, ...)."""
    return self.method.decode(jax.tree.map(jax.lax.stop_gradient, self.variables), codes)


def load_frozen_tokenizer(workdir: str, step: int | None = None,
                          **options: Any) -> FrozenTokenizer:
  """The tokenizer trained in `workdir` (its latest or given checkpoint), frozen: what an
  experiment's `tokenizer_workdir` key names. Raises TokenlabError when the run's method has
  no encode/decode.

  A method whose tokenizer needs more than the checkpoint (e.g. speech_ssl's k-means units,
  fitted after training and saved next to the checkpoints) defines
  `frozen_variables(workdir, variables, **options) -> variables`; `options` (e.g. units=100)
  go to it, and to no other method (a TokenlabError names them)."""
  from tokenlab import data as data_lib
  from tokenlab.method import as_variables
  config = load_config_from_workdir(workdir)
  method = registry.build_method(config.model)
  if not (hasattr(method, "encode") and hasattr(method, "decode")):
    raise TokenlabError(f"{workdir} holds a '{config.model.name}' run, which has no "
                        f"encode/decode; point tokenizer_workdir at a tokenizer run (e.g. "
                        f"experiments/image_tokenizer.py)")
  spec = data_lib.batch_spec(config.data, 1)
  run = load_trained(workdir, {k: np.zeros(s.shape, s.dtype) for k, s in spec.items()}, step)
  variables = jax.device_get(as_variables(run.params, run.model_state))
  if hasattr(run.method, "frozen_variables"):
    variables = run.method.frozen_variables(workdir, variables, **options)
  elif options:
    raise TokenlabError(f"load_frozen_tokenizer({', '.join(sorted(options))}=...): a "
                        f"'{config.model.name}' tokenizer takes no options")
  return FrozenTokenizer(config, run.method, variables, run.step)
