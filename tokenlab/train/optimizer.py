"""Optax optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

import optax

from tokenlab.errors import ConfigError, nearest

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd", "lion")


def make_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up then cosine / linear decay to lr * min_lr_ratio, or constant."""
  lr, warmup = float(opt_cfg.lr), int(opt_cfg.warmup_steps)
  if opt_cfg.schedule not in SCHEDULES:
    raise ConfigError(f"unknown config.optimizer.schedule='{opt_cfg.schedule}'"
                      f"{nearest(opt_cfg.schedule, SCHEDULES)}; use one of {SCHEDULES}")
  warmup = min(warmup, max(total_steps - 1, 0))
  decay_steps = max(total_steps - warmup, 1)
  end = lr * float(opt_cfg.min_lr_ratio)
  if opt_cfg.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif opt_cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(opt_cfg.min_lr_ratio))
  else:
    after = optax.linear_schedule(lr, end, decay_steps)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(opt_cfg, total_steps: int, clip_grad_norm: float,
                   freeze: str = "") -> optax.GradientTransformation:
  """The optimizer of `config.optimizer` with global-norm clipping; parameters whose path
  matches the regex `freeze` get zero updates and no optimizer state (partial fine-tuning)."""
  schedule = make_schedule(opt_cfg, total_steps)
  name = opt_cfg.name
  if name not in OPTIMIZERS:
    raise ConfigError(f"unknown config.optimizer.name='{name}'{nearest(name, OPTIMIZERS)}; "
                      f"use one of {OPTIMIZERS}")
  if name == "adamw":
    tx = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                     weight_decay=opt_cfg.weight_decay, mask=_decay_mask)
  elif name == "adam":
    tx = optax.adam(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps)
  elif name == "lion":
    tx = optax.lion(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                    mask=_decay_mask)
  else:
    tx = optax.sgd(schedule, momentum=opt_cfg.b1)
  if clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_grad_norm), tx)
  if freeze:
    # Clipping sits inside the trained branch: frozen gradients do not count in the norm.
    from tokenlab.train.init_from import freeze_labels
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               freeze_labels(freeze))
  return tx


def _decay_mask(params):
  """Weight decay on matrices only (not on norm scales or biases)."""
  import jax
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)
