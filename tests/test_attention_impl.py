"""Which attention kernel runs (nn/attention.py, issue 13): splash on TPU, cuDNN on GPU, XLA
elsewhere or where the shapes do not fit, chosen by the platform compiled for.

cuDNN cannot run on this CPU machine: for it only the selection logic is tested here. The
splash path is compiled for TPU in tests/test_tpu_compile.py (inside the sharded train step);
here it runs in the Pallas interpreter against XLA.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.kernels.windowed_attention import default_implementation
from tokenlab.nn import attention
from tokenlab.nn.attention import (AttentionError, dense_implementation, dot_product_attention,
                                   windowed_implementation)


def _qkv(seq=128, heads=4, kv_heads=2, head_dim=32, dtype=jnp.float32, batch=2):
  r = np.random.default_rng(0)
  q = jnp.asarray(r.normal(size=(batch, seq, heads, head_dim)), dtype)
  kv = [jnp.asarray(r.normal(size=(batch, seq, kv_heads, head_dim)), dtype) for _ in range(2)]
  return q, *kv


def test_auto_picks_by_target_platform_and_shapes():
  s = jax.ShapeDtypeStruct
  bf16 = s((2, 256, 4, 64), jnp.bfloat16)
  f32 = s((2, 256, 4, 64), jnp.float32)
  short = s((2, 100, 4, 64), jnp.bfloat16)
  pick = lambda q, platform, **kw: dense_implementation(None, q, q, platform=platform, **kw)
  assert pick(bf16, "cpu") == pick(f32, "cpu") == "xla"
  assert pick(bf16, "tpu") == pick(f32, "tpu") == "splash"
  assert pick(short, "tpu") == "xla"                              # not a multiple of 128
  assert pick(bf16, "tpu", bias=jnp.zeros((1, 1, 256, 256))) == "xla"
  assert pick(bf16, "gpu") == "cudnn"
  assert pick(short, "gpu") == "cudnn"                            # cuDNN takes any length
  assert pick(f32, "gpu") == "xla"                                # cuDNN: bf16/fp16 only
  assert pick(s((2, 256, 4, 160), jnp.bfloat16), "gpu") == "xla"  # head_dim > 128
  assert pick(bf16, "gpu", mask=jnp.ones((1, 1, 256, 256), bool)) == "xla"
  # Named implementations: used as named, or an error naming the fallback.
  assert dense_implementation("xla", bf16, bf16, platform="tpu") == "xla"
  assert dense_implementation("pallas_tpu", bf16, bf16, platform="tpu") == "xla"
  assert dense_implementation("splash", f32, f32, platform="cpu") == "splash"
  with pytest.raises(AttentionError, match="not a multiple of 128.*'xla'"):
    dense_implementation("splash", short, short)
  with pytest.raises(AttentionError, match="cuDNN takes bfloat16"):
    dense_implementation("cudnn", f32, f32)
  with pytest.raises(AttentionError, match="'auto', 'xla', 'splash', 'cudnn'"):
    dense_implementation("flash", f32, f32)
  # Windowed: TPU -> tokenlab's Mosaic kernel; GPU -> cuDNN's left window where it fits, else
  # tokenlab's Triton kernel; elsewhere the reference. Named ones stay selectable.
  win = lambda impl, q, w, platform, seg=None: windowed_implementation(impl, q, w, seg, platform)
  seg = s((2, 256), jnp.int32)
  assert win(None, bf16, (64, 0), "tpu") == "pallas_tpu"
  assert win(None, bf16, (64, 0), "gpu") == "cudnn"
  assert win(None, bf16, (64, 0), "gpu", seg) == "pallas_gpu"    # segments: O(N*W) kernel
  assert win(None, bf16, (64, 8), "gpu") == "pallas_gpu"         # cuDNN: left windows only
  assert win(None, f32, (64, 0), "gpu") == "pallas_gpu"
  assert win(None, bf16, (64, 0), "cpu") == "reference"
  assert win("pallas_gpu", bf16, (64, 0), "gpu") == "pallas_gpu"
  assert win("xla", bf16, (64, 0), "tpu") == "reference"
  assert win("splash", bf16, (64, 0), "gpu") == "pallas_tpu"
  assert default_implementation(bf16, (64, 0), None, "gpu") == "cudnn"


def test_auto_on_cpu_is_the_xla_path_unchanged():
  # Exact on purpose: on CPU "auto" must trace to the very program the XLA path was before
  # (jax.nn.dot_product_attention with the segment mask), dense and under a 4-device mesh.
  q, k, v = _qkv(seq=64)
  seg = jnp.asarray(np.repeat([[0] * 20 + [1] * 44], 2, 0), jnp.int32)
  assert attention.dense_implementation(None, q, k) == "xla"

  def before(q, k, v):
    mask = seg[:, None, :, None] == seg[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)

  now = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, causal=True, segment_ids=seg))
  np.testing.assert_array_equal(np.asarray(now(q, k, v)), np.asarray(jax.jit(before)(q, k, v)))
  assert "custom_call" not in now.lower(q, k, v).as_text()
  mesh = jax.make_mesh((4,), ("data",))
  with jax.set_mesh(mesh):
    assert attention.dense_implementation(None, q, k) == "xla"   # the mesh's platform: cpu


def test_splash_path_matches_xla():
  # Splash in the Pallas interpreter (tests/conftest.py asks for it) against XLA: GQA, packed
  # segments, causal; forward and gradients (the transposes, scale and segment ids around the
  # kernel are tokenlab's).
  q, k, v = _qkv()
  seg = jnp.asarray(np.repeat([[0] * 50 + [1] * 78], 2, 0), jnp.int32)

  def run(impl):
    f = lambda q, k, v: dot_product_attention(q, k, v, causal=True, segment_ids=seg,
                                              implementation=impl)
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)))(
        q, k, v)

  chex.assert_trees_all_close(run("splash"), run("xla"), atol=5e-5, rtol=5e-5)
