"""config.train.init_from (start from another run's parameters) and config.train.freeze
(partial fine-tuning) through the real trainer and orbax checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.config import load_config
from tokenlab.errors import ConfigError, TokenlabError
from tokenlab.train.init_from import (check_freeze, describe_overlay, freeze_labels,
                                      load_params, overlay_params)
from tokenlab.train.loop import train

EXP = "experiments/caft.py"


def _run(workdir, arg, *overrides):
  from tokenlab.methods.caft import iterator_fns
  config = load_config(f"{EXP}:size=tiny,{arg}", ["--config.train.progress=false",
                                                  *overrides])
  train_fn, eval_fn = iterator_fns(config)
  train(config, str(workdir), train_iter_fn=train_fn, eval_iter_fn=eval_fn)
  return load_params(str(workdir))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pre")
  return workdir, _run(workdir, "stage=pretrain")


def _flat(tree):
  from flax import traverse_util
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def test_init_from_and_freeze_through_the_trainer(tmp_path, pretrained):
  src, before = pretrained
  # The frozen subtrees end bit-identical to the loaded ones: the run started exactly at
  # the other run's parameters and never updated them; the unfrozen head trained.
  after = _run(tmp_path / "ft", f"stage=finetune,init_from={src}",
               "--config.train.freeze=^(decoder|embed)/", "--config.optimizer.lr=1e-2")
  flat_before, flat_after = _flat(before), _flat(after)
  frozen = [k for k in flat_before if k.startswith(("decoder/", "embed/"))]
  assert frozen
  for k in frozen:
    np.testing.assert_array_equal(flat_after[k], flat_before[k], err_msg=k)
  moved = [k for k in flat_before if k.startswith("lm_head/")
           and not np.array_equal(flat_after[k], flat_before[k])]
  assert moved, "the unfrozen head did not train"
  # Resuming a frozen run restores its (masked) optimizer state and keeps the freeze.
  resumed = _run(tmp_path / "ft", f"stage=finetune,init_from={src}",
                 "--config.train.freeze=^(decoder|embed)/", "--config.optimizer.lr=1e-2",
                 "--config.train.steps=5")
  for k in frozen:
    np.testing.assert_array_equal(_flat(resumed)[k], flat_before[k], err_msg=k)


def test_freeze_state_has_no_optimizer_moments_for_frozen_parameters():
  from tokenlab.train.optimizer import make_optimizer
  cfg = load_config(f"{EXP}:size=tiny").optimizer
  params = {"reference": {"w": jnp.ones((3, 4))}, "policy": {"w": jnp.ones((3, 4))}}
  tx = make_optimizer(cfg, 10, 1.0, freeze="^reference/")
  sizes = sum(x.size for x in jax.tree.leaves(tx.init(params)) if x.ndim == 2)
  assert sizes == 2 * 12   # Adam's mu and nu for `policy/w` only
  updates, _ = tx.update({"reference": {"w": jnp.ones((3, 4))},
                          "policy": {"w": jnp.ones((3, 4))}}, tx.init(params), params)
  assert float(jnp.abs(updates["reference"]["w"]).max()) == 0.0


def test_freeze_errors_name_the_fix():
  params = {"decoder": {"w": jnp.ones(2)}, "embed": {"e": jnp.ones(2)}}
  with pytest.raises(ConfigError, match="matches no parameter.*decoder/w"):
    check_freeze("^encoder/", params)
  with pytest.raises(ConfigError, match="every parameter"):
    check_freeze(".", params)
  with pytest.raises(ConfigError, match="not a valid regular expression"):
    freeze_labels("(")
  assert check_freeze("^decoder/", params) == (1, 2)


def test_init_from_errors_name_the_fix(tmp_path):
  with pytest.raises(TokenlabError, match="no checkpoints/ directory"):
    load_params(str(tmp_path / "missing"))
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(TokenlabError, match="no finished checkpoint"):
    load_params(str(tmp_path / "empty"))


def test_overlay_keeps_boxes_and_new_parameters():
  import flax.linen as nn
  boxed = {"a": nn.LogicallyPartitioned(jnp.zeros((2, 3)), ("embed", "vocab")),
           "h": {"b": nn.LogicallyPartitioned(jnp.zeros((4,)), ("norm",))}}
  loaded = {"a": np.ones((2, 3)), "h": {"b": np.ones((5,))}, "old": np.ones(1)}
  new, kept = overlay_params(boxed, loaded)
  np.testing.assert_array_equal(new["a"].value, 1.0)
  assert new["a"].names == ("embed", "vocab")
  assert kept == ["h/b"]   # shape differs: the fresh init stays
  text = describe_overlay(boxed, loaded)
  assert text.startswith("1 of 2 parameters match") and "h/b" in text and "old" in text
