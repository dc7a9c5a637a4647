"""Test setup: 4 fake CPU devices, so sharding and meshes are exercised on a laptop."""

import os
import tempfile

# Must be set before jax is imported anywhere.
# LLVM at -O0: the tests' models are tiny, so compiling is most of their time, and -O0
# compiles about 30% faster (measured: tests/test_end_to_end.py, test_image_tokenizer.py and
# test_mergedna.py, 268 s -> 190 s of CPU); the programs XLA builds are the same.
# The fusion emitters off (XLA:CPU's older elemental emitters): compiles are another ~25% faster
# (tests/test_end_to_end.py + test_mergedna.py: 133 s -> 100 s of CPU, same tests passing).
# Child processes the tests start read the same flags from TOKENLAB_TEST_COMPILE_FLAGS.
COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("TOKENLAB_TEST_COMPILE_FLAGS", COMPILE_FLAGS)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 "
                      + os.environ["TOKENLAB_TEST_COMPILE_FLAGS"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A named Pallas implementation compiles its kernel unless asked to interpret; on this CPU the
# kernels run in the Pallas interpreter (tokenlab/kernels/_interpret.py). The TPU compile
# tests (tests/test_tpu_compile.py) unset it to prove the Mosaic kernel is what compiles.
os.environ.setdefault("TOKENLAB_PALLAS_INTERPRET", "1")
# One persistent compilation cache for the whole session, shared by the xdist workers and the
# CLI subprocesses the tests start: many tests train the same tiny configurations, and on
# this 2-core CI machine compiles are most of their time. Keyed by the programs, so a hit is
# the same executable a fresh compile would give.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getppid() if os.environ.get(
    "PYTEST_XDIST_WORKER") else os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"tokenlab-test-jax-cache-{_RUN}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# The longest tests first. xdist hands tests to its workers in collection order, by count, not
# by time: when a minute-long test (README's commands, a quick reproduction, the multi-process
# run) is among the last ones handed out, one worker runs it alone at the end while the other
# idles. Started first, the long ones overlap with each other and the many short tests fill
# the end evenly. Order only: every test still runs, the same way.
_LONG_FIRST = ("test_readme.py::", "test_multiprocess.py::", "test_install.py::",
               "::test_repro_quick", "test_end_to_end.py::")


def pytest_collection_modifyitems(session, config, items):
  def rank(item) -> int:
    for i, pattern in enumerate(_LONG_FIRST):
      if pattern in item.nodeid:
        return i
    return len(_LONG_FIRST)
  items.sort(key=rank)   # stable: the original order within each rank


import pytest  # noqa: E402  (after the environment above is set)


@pytest.fixture(scope="session")
def tiny_speech_pieces():
  """`prefill(workdir, **kwargs)`: puts the tiny shared speech pieces (codec, phoneme
  recogniser, speech_ssl units; `kwargs` as `tokenlab.repro.speech_pieces.
  train_speech_pieces` takes them) into WORKDIR/shared before a speech LM's quick
  reproduction runs there, which then reuses them instead of training them again. They are
  trained once per test run, shared by the xdist workers under a file lock; the quick
  reproductions still run the same code path (a finished piece is always reused)."""
  import fcntl
  import shutil
  from tokenlab.repro import Context
  from tokenlab.repro.speech_pieces import train_speech_pieces
  root = os.path.join(tempfile.gettempdir(), f"tokenlab-test-speech-pieces-{_RUN}")
  os.makedirs(root, exist_ok=True)

  def prefill(workdir, **kwargs) -> None:
    with open(os.path.join(root, ".lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      ctx = Context(name="speech_pieces", workdir=os.path.join(root, "seed0"), seed=0,
                    quick=True, root=root)
      train_speech_pieces(ctx, **kwargs)
      shutil.copytree(os.path.join(root, "shared"), os.path.join(str(workdir), "shared"),
                      dirs_exist_ok=True)
  return prefill
