"""Experiment files shipped with tokenlab: one ml-collections `get_config(arg)` per method.

The top-level `experiments/` folder of the checkout, installed as the package
`tokenlab.experiments` (`tokenlab/experiments` links to it), so `--config experiments/NAME.py`
works from any directory once tokenlab is installed.
"""
