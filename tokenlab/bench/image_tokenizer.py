"""`tokenlab bench image_tokenizer`: the image tokenizer's train step, images/s and MFU.

The trainer benchmark (tokenlab/bench/trainer.py) on `experiments/image_tokenizer.py`
(default `size=small,data=photos`: the conv VQ autoencoder with its EMA codebook): the real
trainer, data pipeline included, against this machine's matmul peak measured in the same run.
Model FLOPs per step come from XLA's cost analysis of the compiled step (a conv autoencoder
has no analytic per-token count). Other sizes, data or quantizers: `--config
experiments/image_tokenizer.py:size=tiny,quantizer=fsq`.
"""

from __future__ import annotations

from tokenlab.bench import trainer

DEFAULT = "experiments/image_tokenizer.py:size=small,data=photos"


def main(argv: list[str]) -> int:
  return trainer.main(argv, prog="tokenlab bench image_tokenizer", default=DEFAULT, doc=__doc__)
