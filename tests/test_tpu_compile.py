"""Every Pallas TPU kernel compiled by the real TPU compiler (libtpu), without a TPU.

`jax.jit(f).lower(...).compile()` against the devices of a libtpu topology runs XLA:TPU and
Mosaic: what the Pallas interpreter accepts but the chip's compiler rejects (e.g. a boolean
vector reshape in `local_window_merge`, fixed in issue 13) fails here. Each case goes through
the public functions with only `implementation="pallas_tpu"` named, so it also checks the
dispatcher: a named Pallas implementation compiles the Mosaic kernel (the compiled HLO holds
`tpu_custom_call`), it does not fall back to the interpreter because this host is a CPU.

Shapes are small (seq 1024) to keep the file fast; v5e and v6e, float32 and bfloat16, GQA,
segment ids and windows that do not divide the 128 block are spread over few cases.
"""

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip("libtpu", reason="compiling for TPU needs libtpu (the test extra, Linux)")

from tokenlab.kernels import token_merge as tm  # noqa: E402
from tokenlab.kernels import windowed_attention  # noqa: E402
from tokenlab.kernels._interpret import INTERPRET_ENV  # noqa: E402
from tokenlab.topology import get_topology  # noqa: E402

MOSAIC = "tpu_custom_call"


@pytest.fixture(autouse=True)
def _no_interpreter(monkeypatch):
  # tests/conftest.py asks for the interpreter by default; these tests must not get it.
  monkeypatch.delenv(INTERPRET_ENV, raising=False)


def _spec(topology: str):
  device = get_topology(topology).devices[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  return lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _compiled_text(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


# (topology, dtype, heads, kv_heads, window, segment ids): windows 200, 100 and 511 do not
# divide the block of 128; (4, 2) and (4, 1) heads are grouped-query attention.
ATTENTION_CASES = [
    ("v5e:2x2", jnp.float32, 4, 2, (200, 3), True),
    ("v5e:2x2", jnp.bfloat16, 2, 2, (511, 0), False),
    ("v6e:2x2", jnp.float32, 2, 2, (128, 128), False),
    ("v6e:2x2", jnp.bfloat16, 4, 1, (100, 0), True),
]


@pytest.mark.parametrize("topology,dtype,heads,kv_heads,window,seg", ATTENTION_CASES)
def test_windowed_attention_compiles_to_mosaic(topology, dtype, heads, kv_heads, window, seg):
  s = _spec(topology)
  q = s((1, 1024, heads, 128), dtype)
  kv = s((1, 1024, kv_heads, 128), dtype)
  segment_ids = s((1, 1024), jnp.int32) if seg else None

  def attn(q, k, v, segment_ids):
    return windowed_attention(q, k, v, window=window, segment_ids=segment_ids,
                              implementation="pallas_tpu")

  def loss(q, k, v, segment_ids):
    return jnp.sum(attn(q, k, v, segment_ids).astype(jnp.float32))

  assert _compiled_text(attn, q, kv, kv, segment_ids).count(MOSAIC) == 1
  # Backward: the forward kernel (residuals) plus the dq and dk/dv kernels.
  grad = jax.grad(loss, argnums=(0, 1, 2))
  assert _compiled_text(grad, q, kv, kv, segment_ids).count(MOSAIC) == 3


@pytest.mark.parametrize("topology,dtype", [("v5e:2x2", jnp.float32), ("v6e:2x2", jnp.bfloat16)])
def test_token_merge_kernels_compile_to_mosaic(topology, dtype):
  s = _spec(topology)
  x = s((2, 1024, 128), dtype)
  metric = s((2, 1024, 64), dtype)
  boundaries = s((2, 1024), jnp.bool_)
  kw = dict(implementation="pallas_tpu")

  def by_boundaries(x, b):
    return tm.merge_by_boundaries(x, b, max_groups=512, **kw)[0]

  def tome(x, metric):
    return tm.merge_tokens(x, tm.bipartite_soft_matching(metric, 256, protected=1, **kw),
                           **kw)[0]

  def window(x, metric):
    # window 16, r 4: the case that failed to compile before issue 13 (bool reshape);
    # N = 1024 + 8 would add a short last window that runs on the reference, so keep N full.
    return tm.local_window_merge(x, metric, window=16, r=4, **kw)[0]

  def grad_of(f):
    return jax.grad(lambda x, other: jnp.sum(f(x, other).astype(jnp.float32)))

  # merge_tokens: the matching kernel and the segment-mean kernel.
  for f, other, kernels in [(by_boundaries, boundaries, 1), (tome, metric, 2),
                            (window, metric, 1)]:
    assert _compiled_text(f, x, other).count(MOSAIC) == kernels, f.__name__
    # The backward of every merge is the shared XLA segment-mean VJP; the forward kernels
    # stay in the gradient program (they give the residuals).
    assert _compiled_text(grad_of(f), x, other).count(MOSAIC) == kernels, f.__name__


def test_interpret_runs_only_when_asked(monkeypatch):
  # interpret=True (or the env var tests/conftest.py sets) lowers to the interpreter's plain
  # XLA ops, so no Mosaic call; naming the implementation alone gives the Mosaic call.
  s = _spec("v5e:2x2")
  q = s((1, 256, 2, 128))

  def attn(interpret):
    return lambda q: windowed_attention(q, q, q, window=(64, 0), implementation="pallas_tpu",
                                        interpret=interpret)

  lowered = lambda f: jax.jit(f).lower(q).as_text()
  assert MOSAIC in lowered(attn(None))
  assert MOSAIC not in lowered(attn(True))
  monkeypatch.setenv(INTERPRET_ENV, "1")
  assert MOSAIC not in lowered(attn(None))
  assert MOSAIC in lowered(attn(False))


def test_train_step_runs_splash_attention_on_tpu():
  # The real sharded train step (what `tokenlab plan --topology` compiles: abstract state and
  # batch over a mesh of the topology's 4 devices) of a tiny transformer_lm whose sequence
  # fits splash's 128 block: with attention_impl left to "auto" the TPU target picks splash
  # (this process's backend is CPU), run per shard, forward (saving residuals) and backward.
  import os

  from tokenlab import plan
  from tokenlab.config import load_config
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config(os.path.join(repo, "experiments/transformer_lm.py:size=tiny"),
                       ["config.data.seq_len=128", "config.mesh.data=2", "config.mesh.fsdp=2"])
  report = plan.make_plan(config, None, top=1, topology="v5e:2x2")
  assert "TPU compiler" in report["backend"] and report["mesh"]["data"] == 2
  kernels = report["mosaic_kernels"]
  # One forward, one dq and one dkv kernel per layer (2 layers, unrolled); packed rows carry
  # segment ids, so the segmented variants.
  layers = config.model.num_layers
  assert kernels == {"splash_mha_dkv_segmented_no_residuals": layers,
                     "splash_mha_dq_segmented_no_residuals": layers,
                     "splash_mha_fwd_segmented_residuals": layers}, kernels
  assert "splash_mha_fwd_segmented_residuals x2" in plan.format_plan(report)
