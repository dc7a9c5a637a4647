"""ToMe in a ViT (method tome): the mechanism's invariants, and the quick reproduction, whose
trained arm runs ToMe's train step in the real trainer on the 4 test devices (sharded batch)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.tome import ToMe, ToMeConfig, schedule
from tokenlab.nn import token_reduction as tr

CFG = ToMeConfig(d_model=16, num_layers=2, num_heads=2, mlp_dim=32)


@pytest.fixture(scope="module")
def setup():
  """A tiny ToMe ViT (2 blocks, 16x16 RGB images of 4x4 patches: 16 patches + class token),
  its parameters (trained without merging, as off the shelf) and a batch."""
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
  images[:, 8:] = 0.0            # a flat half: identical background tokens, as in shapes
  method = ToMe(CFG)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray([0, 1, 2], jnp.int32)}
  params = nn.unbox(jax.jit(method.init)(jax.random.key(0), batch))
  return method, params, batch


_PROGRAMS = {}


def _forward(method, params, images, key=0):
  """One compiled forward per model configuration (compiles are most of these tests' time)."""
  if method.config not in _PROGRAMS:
    _PROGRAMS[method.config] = jax.jit(method.forward)
  return _PROGRAMS[method.config](params, images, jax.random.key(key))


def test_every_reduction_removes_the_scheduled_tokens_and_keeps_the_class_token(setup):
  method, params, batch = setup
  for reduction in ("tome", "random", "attention"):
    v = method.variant(r=5, reduction=reduction)
    assert v.token_counts(16) == [12, 7]        # 17 -> 12 -> (12 - 1) // 2 = 5 -> 7
    logits, sizes, gid = _forward(v, params, batch["image"])
    assert logits.shape == (3, 4) and sizes.shape == (3, 7)
    g = np.asarray(gid)
    assert np.all(g[:, 0] == 0)                 # the class token is protected: first, alone
    assert np.all((g[:, 1:] != 0))
    if reduction == "tome":
      # Merging keeps every patch: sizes count them; each group's size is its ids' count.
      np.testing.assert_array_equal(np.asarray(sizes).sum(1), [17, 17, 17])
      assert float(sizes[0, 0]) == 1.0
      for b in range(3):
        np.testing.assert_array_equal(np.bincount(g[b], minlength=7), np.asarray(sizes[b]))
    else:
      # Pruning drops 10 patches per image (id -1) and keeps sizes 1.
      np.testing.assert_array_equal((g == -1).sum(1), [10, 10, 10])
      np.testing.assert_array_equal(np.asarray(sizes), 1.0)
  # Random dropping changes with the rng; attention pruning is a function of the input.
  rnd, att = method.variant(r=5, reduction="random"), method.variant(r=5, reduction="attention")
  g1, g2 = (np.asarray(_forward(rnd, params, batch["image"], k)[2]) for k in (1, 2))
  assert not np.array_equal(g1, g2)
  a1, a2 = (np.asarray(_forward(att, params, batch["image"], k)[2]) for k in (1, 2))
  np.testing.assert_array_equal(a1, a2)


def test_off_the_shelf_reuses_the_parameters_and_merging_acts(setup):
  method, params, batch = setup
  merged = method.variant(r=5)
  again = jax.eval_shape(lambda: nn.unbox(merged.init(jax.random.key(1), batch)))
  assert (jax.tree_util.tree_map(lambda a: a.shape, again)
          == jax.tree_util.tree_map(lambda a: a.shape, params))
  plain, sizes, _ = _forward(method, params, batch["image"])
  tome, _, _ = _forward(merged, params, batch["image"])
  assert sizes.shape == (3, 17)
  assert not np.allclose(np.asarray(plain), np.asarray(tome), atol=1e-6)


def test_schedules_constant_and_decreasing():
  assert schedule(ToMeConfig(num_layers=4, r=3)) == [3, 3, 3, 3]
  # ToMe's (r, inflect) line: from int(r (1 - inflect)) down to 2 r - that, mean about r.
  rs = tr.decreasing_r(12, 8, -0.5)
  assert rs[0] == 12 and rs[-1] == 4 and all(a >= b for a, b in zip(rs, rs[1:]))
  assert abs(np.mean(rs) - 8) < 0.6
  assert tr.decreasing_r(5, 6, 0.0) == [6] * 5
  assert schedule(ToMeConfig(num_layers=12, r=8, r_inflect=-0.5)) == rs
  # Clamping: never more than (N - 1) // 2 per block, never below the class token + 1.
  assert tr.token_counts(17, [100, 100, 100]) == [9, 5, 3]


def test_fused_kernel_and_plain_tome_merge_the_same_tokens_with_the_same_gradients():
  """One block: the kernel path and ToMe's own merge.py in jnp give the same tokens (only the
  order differs: ToMe puts [unmerged A, B]), the class token first in both; and the kernel's
  custom backward gives the gradients autodiff gives through the plain merge."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 17, 16)).astype(np.float32))
  blk = tr.ToMeBlock(num_heads=2, mlp_dim=32, r=6, protected=1)
  p = jax.jit(blk.init)(jax.random.key(0), x)

  def run(impl):
    b = blk.clone(implementation=impl)
    def score(p, x):   # invariant to the token order, so both paths must agree
      y, s, _ = b.apply(p, x)
      return jnp.sum(jnp.sin(y) * s[..., None]), (y, s)
    return jax.jit(jax.value_and_grad(score, argnums=(0, 1), has_aux=True))(p, x)

  (_, (y_k, s_k)), g_k = run(None)
  (_, (y_p, s_p)), g_p = run("plain")
  assert y_p.shape == y_k.shape == (2, 11, 16)
  np.testing.assert_allclose(np.asarray(y_p[:, 0]), np.asarray(y_k[:, 0]), rtol=1e-5)
  for b in range(2):
    order_k = np.lexsort(np.asarray(y_k[b]).T[::-1])
    order_p = np.lexsort(np.asarray(y_p[b]).T[::-1])
    np.testing.assert_allclose(np.asarray(y_p[b])[order_p], np.asarray(y_k[b])[order_k],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(s_p[b])[order_p], np.asarray(s_k[b])[order_k])
  leaves_k, leaves_p = jax.tree_util.tree_leaves(g_k), jax.tree_util.tree_leaves(g_p)
  assert all(float(jnp.abs(g).sum()) > 0 for g in leaves_k)   # every parameter and x learn
  for a, b in zip(leaves_k, leaves_p):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_bad_config_names_the_fix():
  from tokenlab.errors import ConfigError
  with pytest.raises(ConfigError, match="reduction"):
    ToMe(ToMeConfig(reduction="pool"))
  with pytest.raises(ConfigError, match="implementation"):
    ToMe(ToMeConfig(implementation="cuda"))


def test_repro_quick(tmp_path):
  """The quick reproduction; its one trained arm is the ToMe ViT (r = 12 in both blocks)
  through the real trainer on the default mesh, data = -1: the 4 test devices, so the train
  and eval steps run ToMe on a batch sharded 4 ways."""
  import json
  from tokenlab import repro
  assert jax.device_count() == 4
  report = repro.run("tome", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  arm = tmp_path / "seed0" / "tome_trained_r12"
  assert json.load(open(arm / "config.json"))["model"]["r"] == 12
  rows = [json.loads(line) for line in open(arm / "metrics.jsonl")]
  assert [r["info/devices"] for r in rows if "info/devices" in r] == [4]
  final = [r for r in rows if "eval/final_tokens" in r][-1]
  assert final["eval/final_tokens"] == 65 - 12 - 12 and np.isfinite(final["eval/loss"])
  assert any("train/loss" in r and np.isfinite(r["train/loss"]) for r in rows)
  arms = {r[0] for r in report.rows}
  assert {"vit (r=0)", "tome off-the-shelf r=12", "tome trained r=12", "untrained ViT",
          "majority class", "pixel naive Bayes (counts)"} <= arms
  assert (tmp_path / "repro.md").exists() and (tmp_path / "tome_merges.png").exists()


def test_bench_vit_tome_quick(capsys):
  from tokenlab.bench import vit_tome
  assert vit_tome.main(["--quick"]) == 0
  out = capsys.readouterr().out
  assert "kernel/plain" in out and "quick: no claim" in out
  row = [line for line in out.splitlines() if line.strip().startswith("4 ")][0]
  assert row.split()[1] == "57"           # 65 tokens, two blocks of r = 4
