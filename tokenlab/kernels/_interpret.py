"""When the Pallas kernels run in the interpreter instead of being compiled.

An explicit `implementation="pallas_tpu"` (or "pallas_gpu") means the Mosaic (Triton) kernel:
it is lowered for the platform the program is compiled for, which need not be the backend this
process runs on (ahead-of-time compilation for a TPU topology from a CPU host). So the choice
cannot come from `jax.default_backend()`. The interpreter runs only when asked for:

- `interpret=True` on the call, or
- the environment variable `TOKENLAB_PALLAS_INTERPRET=1` (tests/conftest.py sets it, so the
  test suite runs the Pallas kernels on CPU through models that do not pass `interpret=`).

Without either, a Pallas implementation run on CPU fails in Pallas' lowering, naming the
interpreter as the way out.
"""

from __future__ import annotations

import os

INTERPRET_ENV = "TOKENLAB_PALLAS_INTERPRET"


def resolve_interpret(interpret: bool | None) -> bool:
  """`interpret` if given, else whether TOKENLAB_PALLAS_INTERPRET asks for the interpreter."""
  if interpret is not None:
    return bool(interpret)
  return os.environ.get(INTERPRET_ENV, "").strip().lower() in ("1", "true", "yes")
