"""`tokenlab sample` routing for methods that make their own data (config.data.name='method'):
the kind of what they sample comes from the method class, their batch from iterator_fns."""

import numpy as np

from tokenlab import cli
from tokenlab.config import load_config


def test_method_data_kind_comes_from_the_method_class():
  for name in ("echopulse", "motionaura"):
    config = load_config(f"experiments/{name}.py:size=tiny")
    assert config.data.name == "method"
    assert cli._data_kind(config) == "video"          # GIF / PNG strip, not the text path
  # A method-data run without sample_kind keeps the text path (None), a dataset its kind.
  assert cli._data_kind(load_config("experiments/fourier_head.py:size=tiny")) is None
  assert cli._data_kind(load_config("experiments/video_tokenizer.py:size=tiny")) == "video"


def test_first_batch_of_method_data_comes_from_iterator_fns():
  config = load_config("experiments/fourier_head.py:size=tiny")
  batch = cli._first_batch(config, "validation", 3)
  assert all(np.asarray(v).shape[0] == 3 for v in batch.values())
