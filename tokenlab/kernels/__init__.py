"""Hot operations with a jax.numpy reference and Pallas kernels for GPU and TPU.

Public functions are imported lazily so that importing `tokenlab.kernels` stays cheap and a
kernel package that fails to import does not take the others down with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "windowed_attention": "tokenlab.kernels.windowed_attention",
    "neighborhood_attention_2d": "tokenlab.kernels.windowed_attention",
    "merge_by_boundaries": "tokenlab.kernels.token_merge",
    "unmerge": "tokenlab.kernels.token_merge",
    "bipartite_soft_matching": "tokenlab.kernels.token_merge",
    "merge_tokens": "tokenlab.kernels.token_merge",
    "local_window_merge": "tokenlab.kernels.token_merge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'tokenlab.kernels' has no attribute '{name}'")
