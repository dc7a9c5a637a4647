"""Validation of `config.data`: every user mistake ends in one ConfigError naming the fix."""

import ml_collections
import pytest

from tokenlab import data
from tokenlab.data import config as data_config
from tokenlab.errors import ConfigError


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_default_config_has_every_key_and_validates(name):
  cfg = data.default_data_config(name)
  assert isinstance(cfg, ml_collections.ConfigDict)
  assert set(cfg.keys()) == set(data_config.KEYS)
  assert cfg.options.to_dict() == dict(data.DATASETS[name].default_options)
  if name == "tfds":  # An external dataset has no default: the user names it.
    cfg.options.tfds_name = "lm1b"
  data.validate_data_config(cfg)


def test_unknown_dataset_names_nearest_and_lists_all():
  with pytest.raises(ConfigError) as e:
    data.validate_data_config({"name": "markvo"})
  msg = str(e.value)
  assert "'markvo'" in msg and "did you mean 'markov'" in msg
  assert all(n in msg for n in data.DATASETS) and "\n" not in msg
  with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
    data.default_data_config("imagenet")


def test_unknown_option_key_names_nearest():
  cfg = data.default_data_config("markov")
  cfg.options.lenght = 64  # ConfigDict accepts new keys; validation must not.
  with pytest.raises(ConfigError, match=r"options\.lenght.*did you mean 'length'"):
    data.validate_data_config(cfg)


def test_unknown_top_level_key_names_nearest():
  cfg = data.default_data_config("pysrc").to_dict()
  cfg["seqlen"] = 128
  with pytest.raises(ConfigError, match=r"config\.data\.seqlen.*did you mean 'seq_len'"):
    data.validate_data_config(cfg)


def test_unknown_tokenizer_names_nearest_and_choices():
  cfg = data.default_data_config("pysrc")
  cfg.tokenizer = "sentencepeice"
  with pytest.raises(ConfigError, match="did you mean 'sentencepiece'.*bytes, sentencepiece, bpe"):
    data.validate_data_config(cfg)


def test_wrong_option_type_and_bad_values():
  cfg = data.default_data_config("markov").to_dict()
  cfg["options"]["k"] = "4"  # A dict: ConfigDict itself refuses type changes.
  with pytest.raises(ConfigError, match="options.k='4' must be a int"):
    data.validate_data_config(cfg)
  with pytest.raises(ConfigError, match="p=1.5 must be in"):
    data.validate_data_config({"name": "markov", "options": {"p": 1.5}})
  with pytest.raises(ConfigError, match="vocab_size=512"):
    data.validate_data_config({"name": "markov", "tokenizer": "bytes", "vocab_size": 512})
  with pytest.raises(ConfigError, match="size=4 must be >= 8"):
    data.validate_data_config({"name": "digits", "options": {"size": 4}})


def test_resolve_fills_defaults_and_int_options_for_floats_name_one_build():
  a = data_config.resolve({"name": "markov", "options": {"p": 1}})
  b = data_config.resolve({"name": "markov", "options": {"p": 1.0}})
  assert a == b and isinstance(a["options"]["p"], float)
  assert a["seq_len"] == 256 and a["options"]["k"] == 4
