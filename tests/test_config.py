"""Experiment configs: loading, overrides, and errors that name the fix."""

import pytest

from tokenlab import config as config_lib
from tokenlab.errors import ConfigError

EXP = "experiments/transformer_lm.py"


def test_loads_variant_and_overrides():
  c = config_lib.load_config(f"{EXP}:size=tiny", ["--config.optimizer.lr=0.5",
                                                  "--config.train.steps=7",
                                                  "--config.model.window=(16, 0)",
                                                  "--config.train.progress=false"])
  assert c.optimizer.lr == 0.5 and isinstance(c.optimizer.lr, float)
  assert c.train.steps == 7
  assert tuple(c.model.window) == (16, 0)
  assert c.train.progress is False
  assert c.model.d_model == 64  # the tiny variant


@pytest.mark.parametrize("key", ["seed", "train.steps", "train.batch_size", "train.log_every",
                                 "train.eval_every", "checkpoint.every_steps", "mesh",
                                 "model", "data", "optimizer"])
def test_every_experiment_has_the_keys_tools_rely_on(key):
  c = config_lib.load_config(f"{EXP}:size=tiny")
  node = c
  for part in key.split("."):
    node = node[part]


@pytest.mark.parametrize("override,expected", [
    ("--config.train.stepz=3", "did you mean 'train.steps'"),
    ("--config.optimizer.learning_rate=3", "did you mean 'optimizer.lr'"),
    ("--config.modle.d_model=3", "did you mean 'model'"),
    ("--config.train.batch_size=x", "expected int"),
    ("--config.train=3", "group of keys"),
])
def test_bad_overrides_name_the_fix(override, expected):
  with pytest.raises(ConfigError, match=expected):
    config_lib.load_config(f"{EXP}:size=tiny", [override])


def test_unknown_variant_and_missing_file():
  with pytest.raises(ConfigError, match="did you mean 'tiny'"):
    config_lib.load_config(f"{EXP}:size=tni")
  with pytest.raises(ConfigError, match="unknown config argument 'sise'"):
    config_lib.load_config(f"{EXP}:sise=tiny")
  with pytest.raises(ConfigError, match="not found"):
    config_lib.load_config("experiments/nope.py")


def test_experiment_without_base_keys_is_refused(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text("from ml_collections import ConfigDict\n"
                  "def get_config(arg=None):\n  return ConfigDict({'seed': 1})\n")
  with pytest.raises(ConfigError, match="base_config"):
    config_lib.load_config(str(path))


def test_config_diff_and_json_round_trip():
  a = config_lib.load_config(f"{EXP}:size=tiny")
  b = config_lib.from_json(config_lib.to_json(a))
  assert config_lib.config_diff(a, b) == []
  c = config_lib.load_config(f"{EXP}:size=tiny", ["--config.optimizer.lr=1.0"])
  assert config_lib.config_diff(a, c) == ["optimizer.lr"]


def test_unknown_model_key_names_nearest_field():
  from tokenlab import registry
  c = config_lib.load_config(f"{EXP}:size=tiny")
  with c.unlocked():
    c.model.num_layer = 3
  with pytest.raises(ConfigError, match="did you mean 'num_layers'"):
    registry.build_method(c.model)
  with c.unlocked():
    del c.model["num_layer"]
    c.model.name = "transformer_llm"
  with pytest.raises(ConfigError, match="did you mean 'transformer_lm'"):
    registry.build_method(c.model)
