"""tokenlab: a JAX/Flax framework for research on tokens."""

__version__ = "0.1.0"
