"""Fused token merging: merge by boundaries, ToMe bipartite matching, local-window merging.

Public API (every function takes `implementation=` "reference" | "pallas_gpu" | "pallas_tpu",
default: the best for `jax.default_backend()`, and `interpret=`: a named Pallas implementation
is compiled for the platform the program is lowered for (also ahead of time for a TPU topology
from a CPU host); the Pallas interpreter runs only with `interpret=True` or
TOKENLAB_PALLAS_INTERPRET=1, as the tests set it; see tokenlab/kernels/_interpret.py):

- `merge_by_boundaries(x, boundaries, *, weights=None, max_groups=None)`
  -> (merged (B, M, D), group_ids (B, N) int32, counts (B, M) int32)
- `unmerge(merged, group_ids)` -> (B, N, D)
- `bipartite_soft_matching(metric, r, *, protected=0)` -> `MergePlan`
- `merge_tokens(x, plan, sizes=None)` -> (merged (B, N - r, D), sizes (B, N - r))
- `local_window_merge(x, metric, *, window, r, sizes=None)`
  -> (merged (B, M, D), group_ids (B, N) int32, sizes (B, M))

All merges are weighted segment means with one custom VJP (gradients in x and in the
weights/sizes); merge decisions (boundaries, ToMe matching, window pairs) carry no gradient,
as in ToMe (`torch.no_grad()` around the matching). See reference.py for the algorithms.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import TokenlabError
from tokenlab.kernels._interpret import resolve_interpret
from tokenlab.kernels.token_merge import reference as ref
from tokenlab.kernels.token_merge.reference import MergePlan

__all__ = ["merge_by_boundaries", "unmerge", "bipartite_soft_matching", "merge_tokens",
           "local_window_merge", "MergePlan", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("reference", "pallas_gpu", "pallas_tpu")


def _resolve(implementation: str | None, interpret: bool | None) -> tuple[str, bool]:
  """Picks the implementation (None: the best for the backend) and whether Pallas interprets.

  Interpret mode is never inferred from the backend: compiling for a TPU topology from a CPU
  host must lower the Mosaic kernel.
  """
  backend = jax.default_backend()
  if implementation is None:
    implementation = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu",
                      "tpu": "pallas_tpu"}.get(backend, "reference")
  if implementation not in IMPLEMENTATIONS:
    raise TokenlabError(f"unknown token_merge implementation '{implementation}'; use one of "
                        f"{', '.join(IMPLEMENTATIONS)}")
  return implementation, resolve_interpret(interpret)


def _check_3d(name: str, x) -> None:
  if getattr(x, "ndim", None) != 3:
    raise TokenlabError(f"{name} must be (batch, tokens, dim), got shape "
                        f"{getattr(x, 'shape', None)}; add a batch axis with x[None]")


def _check_int(name: str, value, lo: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TokenlabError(f"{name} must be a Python int (it fixes output shapes), got {value!r}")
  if value < lo:
    raise TokenlabError(f"{name} must be >= {lo}, got {value}")
  return int(value)


# ---------------------------------------------------------------------------------------------
# The one differentiable core: weighted segment mean with a custom VJP.


def _segment_mean_impl(x, w, gid, num_groups, implementation, sorted_ids, interpret):
  if implementation == "reference":
    return ref.segment_weighted_mean(x, w, gid, num_groups, sorted_ids=sorted_ids)
  if implementation == "pallas_gpu":
    from tokenlab.kernels.token_merge import pallas_gpu as kernels
  else:
    from tokenlab.kernels.token_merge import pallas_tpu as kernels
  if not sorted_ids:
    # The kernels need contiguous groups (that is what lets them skip blocks); a stable sort of
    # the ids makes any grouping contiguous without changing the per-group sums' order much.
    perm = jnp.argsort(gid, axis=1, stable=True)
    x = jnp.take_along_axis(x, perm[..., None], axis=1)
    w = jnp.take_along_axis(w, perm, axis=1)
    gid = jnp.take_along_axis(gid, perm, axis=1)
  return kernels.segment_mean(x, w, gid, num_groups, interpret=interpret)


def _segment_mean_grads(x, w, gid, out, wsum, g_out, g_wsum):
  """Cotangents of (out, wsum) = weighted segment mean w.r.t. x and w."""
  m = out.shape[1]
  valid = (gid >= 0) & (gid < m)
  cid = jnp.clip(gid, 0, m - 1)
  denom = jnp.take_along_axis(wsum, cid, axis=1)
  ok = valid & (denom > 0)
  inv = jnp.where(ok, 1.0 / jnp.where(ok, denom, 1.0), 0.0)
  g_tok = jnp.take_along_axis(g_out.astype(jnp.float32), cid[..., None], axis=1)
  out_tok = jnp.take_along_axis(out.astype(jnp.float32), cid[..., None], axis=1)
  gx = g_tok * (w.astype(jnp.float32) * inv)[..., None]
  # d out_g / d w_t = (x_t - out_g) / W_g; d W_g / d w_t = 1.
  gw = jnp.sum(g_tok * (x.astype(jnp.float32) - out_tok), axis=-1) * inv
  gw = gw + jnp.where(valid, jnp.take_along_axis(g_wsum, cid, axis=1), 0.0)
  return gx.astype(x.dtype), gw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _segment_mean(x, w, gid, num_groups, implementation, sorted_ids, interpret):
  return _segment_mean_impl(x, w, gid, num_groups, implementation, sorted_ids, interpret)


def _segment_mean_fwd(x, w, gid, num_groups, implementation, sorted_ids, interpret):
  out, wsum = _segment_mean_impl(x, w, gid, num_groups, implementation, sorted_ids, interpret)
  return (out, wsum), (x, w, gid, out, wsum)


def _segment_mean_bwd(num_groups, implementation, sorted_ids, interpret, res, g):
  del num_groups, implementation, sorted_ids, interpret
  x, w, gid, out, wsum = res
  gx, gw = _segment_mean_grads(x, w, gid, out, wsum, *g)
  return gx, gw, None


_segment_mean.defvjp(_segment_mean_fwd, _segment_mean_bwd)


def _weights(name: str, w, x) -> jax.Array:
  b, n, _ = x.shape
  if w is None:
    return jnp.ones((b, n), jnp.float32)
  w = jnp.asarray(w)
  if w.ndim == 3 and w.shape[-1] == 1:  # ToMe keeps sizes as (B, N, 1)
    w = w[..., 0]
  if w.shape != (b, n):
    raise TokenlabError(f"{name} must have shape {(b, n)} (batch, tokens), got {w.shape}")
  return w.astype(jnp.float32) if not jnp.issubdtype(w.dtype, jnp.floating) else w


# ---------------------------------------------------------------------------------------------
# Public API.


def merge_by_boundaries(x: jax.Array, boundaries: jax.Array, *, weights: jax.Array | None = None,
                        max_groups: int | None = None, implementation: str | None = None,
                        interpret: bool | None = None
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(Weighted) mean of each contiguous group of tokens (H-Net chunking, MergeDNA chunks).

  Args:
    x: (B, N, D) tokens.
    boundaries: (B, N) bool, True where a new group starts; position 0 always starts one.
    weights: optional (B, N) nonnegative weights (e.g. boundary probabilities); the group
      value is sum(w x) / sum(w). Differentiable in x and weights.
    max_groups: M, the padded number of output groups (default N). With concrete boundaries
      (outside jit; checked on the host, which syncs) more groups than M raises TokenlabError. Under jit the count cannot be checked: tokens of
      groups >= M are then left out of `merged`, but their `group_ids` still say so
      (`group_ids.max() >= M`) and `unmerge` gives them zeros; nothing is dropped silently.
    implementation, interpret: see the module docstring.
  Returns:
    merged (B, M, D) in x's dtype (rows past the last group are 0), group_ids (B, N) int32,
    counts (B, M) int32 tokens per group (0 for padding rows).
  """
  _check_3d("x", x)
  b, n, _ = x.shape
  if getattr(boundaries, "shape", None) != (b, n):
    raise TokenlabError(f"boundaries must have shape {(b, n)} (batch, tokens), got "
                        f"{getattr(boundaries, 'shape', None)}")
  m = n if max_groups is None else _check_int("max_groups", max_groups, 1)
  if not isinstance(boundaries, jax.core.Tracer):
    needed = int(np.max(np.sum(np.asarray(boundaries)[:, 1:], axis=1))) + 1
    if needed > m:
      raise TokenlabError(f"boundaries make {needed} groups but max_groups={m}; pass "
                          f"max_groups>={needed}")
  impl, interp = _resolve(implementation, interpret)
  w = _weights("weights", weights, x)
  return _merge_by_boundaries(x, jnp.asarray(boundaries, bool), w, m, impl, interp)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _merge_by_boundaries(x, boundaries, w, m, impl, interp):
  gid = ref.group_ids_from_boundaries(boundaries)
  merged, _ = _segment_mean(x, w, gid, m, impl, True, interp)
  rows = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]
  counts = jnp.zeros((x.shape[0], m), jnp.int32).at[rows, gid].add(1, mode="drop")
  return merged, gid, counts


def unmerge(merged: jax.Array, group_ids: jax.Array) -> jax.Array:
  """Each token gets its group's vector: (B, M, D), (B, N) int -> (B, N, D).

  The upsampling of H-Net's dechunk and MergeDNA's local decoder; ids outside [0, M) give 0.
  """
  _check_3d("merged", merged)
  if getattr(group_ids, "ndim", None) != 2 or group_ids.shape[0] != merged.shape[0]:
    raise TokenlabError(f"group_ids must be (batch, tokens) with batch {merged.shape[0]}, got "
                        f"{getattr(group_ids, 'shape', None)}; pass the group_ids the merge "
                        "returned")
  return _gather(merged, group_ids)


_gather = jax.jit(ref.gather_groups)


def bipartite_soft_matching(metric: jax.Array, r: int, *, protected: int = 0,
                            implementation: str | None = None,
                            interpret: bool | None = None) -> MergePlan:
  """ToMe's bipartite soft matching (Bolya et al., ICLR 2023): decide which tokens merge.

  Tokens alternate between A (even positions) and B (odd positions); with cosine similarity
  of `metric`, every A token finds its best B token (ties: lowest B index); the r A tokens with
  the highest best-similarity (ties: lowest A index) merge into their match. The first
  `protected` tokens never merge (A ones never leave, B ones never receive), which covers
  ToMe's class and distillation tokens. r is clamped to (N - protected) // 2 as in ToMe.

  Args:
    metric: (B, N, C) similarity features (ToMe uses the attention keys averaged over heads).
      Not differentiated through (ToMe runs the matching under no_grad).
    r: tokens to remove (Python int).
    protected: number of leading tokens that never merge.
  Returns:
    A `MergePlan` (src_idx, dst_idx: (B, r); group_ids: (B, N) slots in [0, N - r)).
  """
  _check_3d("metric", metric)
  r = _check_int("r", r, 0)
  protected = _check_int("protected", protected, 0)
  n = metric.shape[1]
  if protected > n:
    raise TokenlabError(f"protected={protected} exceeds the {n} tokens; pass protected<={n}")
  impl, interp = _resolve(implementation, interpret)
  return _bipartite_soft_matching(jax.lax.stop_gradient(metric), r, protected, impl, interp)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _bipartite_soft_matching(metric, r, protected, impl, interp):
  n = metric.shape[1]
  r_eff = ref.effective_r(n, r, protected)
  if impl == "reference" or r_eff == 0:
    return ref.bipartite_soft_matching(metric, r, protected)
  if impl == "pallas_gpu":
    from tokenlab.kernels.token_merge import pallas_gpu as kernels
  else:
    from tokenlab.kernels.token_merge import pallas_tpu as kernels
  m = ref.normalize(metric)
  node_max, node_idx = kernels.best_match(m[:, ::2], m[:, 1::2], (protected + 1) // 2,
                                          protected // 2, interpret=interp)
  return ref.plan_from_matches(node_max, node_idx, n, r_eff)


def merge_tokens(x: jax.Array, plan: MergePlan, sizes: jax.Array | None = None, *,
                 implementation: str | None = None, interpret: bool | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """Applies a ToMe plan with size-weighted averaging (ToMe's `merge_wavg`).

  Args:
    x: (B, N, D) tokens.
    plan: from `bipartite_soft_matching` on the same N tokens.
    sizes: (B, N) (or ToMe's (B, N, 1)) tokens each row already stands for; None = 1.
  Returns:
    merged (B, N - r, D) and the new sizes (B, N - r) float32 (they sum to sum(sizes));
    for proportional attention add log(sizes) to the attention logits. Differentiable in x
    and sizes.
  """
  _check_3d("x", x)
  if not isinstance(plan, MergePlan):
    raise TokenlabError("plan must be the MergePlan returned by bipartite_soft_matching")
  if plan.group_ids.shape != x.shape[:2]:
    raise TokenlabError(f"plan was made for {plan.group_ids.shape} tokens but x has "
                        f"{x.shape[:2]}; rerun bipartite_soft_matching on these tokens")
  impl, interp = _resolve(implementation, interpret)
  w = _weights("sizes", sizes, x)
  return _merge_tokens(x, w, plan.group_ids, plan.num_out, impl, interp)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _merge_tokens(x, w, gid, num_out, impl, interp):
  return _segment_mean(x, w, gid, num_out, impl, False, interp)


def local_window_merge(x: jax.Array, metric: jax.Array, *, window: int, r: int,
                       sizes: jax.Array | None = None, implementation: str | None = None,
                       interpret: bool | None = None
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MergeDNA's local merging: in each window, merge the r most similar disjoint adjacent pairs.

  Windows are the non-overlapping spans [k*window, (k+1)*window); the last one may be short
  (N need not divide). In a window of L tokens min(r, L // 2) pairs merge: adjacent pairs are
  visited by decreasing cosine similarity of `metric` (ties: leftmost pair) and taken when
  both tokens are still free; if that greedy matching cannot reach the count, the window
  takes (0,1), (2,3), ... instead (the fallback of the MergeDNA reproduction). A pair's value
  is the size-weighted mean; no merge crosses a window.

  Args:
    x: (B, N, D) tokens; metric: (B, N, C) similarity features (not differentiated).
    window: window length (>= 2). r: pairs per window (Python int >= 0).
    sizes: optional (B, N) tokens each row stands for (weights of the mean); None = 1.
  Returns:
    merged (B, M, D), group_ids (B, N) int32 in [0, M) (for `unmerge`), sizes (B, M) float32,
    where M = N - sum over windows of min(r, L // 2) (static).
  """
  _check_3d("x", x)
  _check_3d("metric", metric)
  if metric.shape[:2] != x.shape[:2]:
    raise TokenlabError(f"metric {metric.shape} and x {x.shape} must share (batch, tokens)")
  window = _check_int("window", window, 2)
  r = _check_int("r", r, 0)
  impl, interp = _resolve(implementation, interpret)
  w = _weights("sizes", sizes, x)
  return _local_window_merge(x, jax.lax.stop_gradient(metric), w, window, r, impl, interp)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _local_window_merge(x, metric, w, window, r, impl, interp):
  if impl == "reference":
    gid, m = ref.local_window_plan(metric, window, r)
    merged, new_sizes = _segment_mean(x, w, gid, m, impl, True, interp)
    return merged, gid, new_sizes
  if impl == "pallas_gpu":
    from tokenlab.kernels.token_merge import pallas_gpu as kernels
  else:
    from tokenlab.kernels.token_merge import pallas_tpu as kernels
  return _window_vjp(x, w, metric, window, r, kernels, interp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _window_vjp(x, w, metric, window, r, kernels, interpret):
  """The window kernels' forward with the shared segment-mean backward."""
  return kernels.local_window_merge(x, metric, w, window, r, interpret=interpret)


def _window_vjp_fwd(x, w, metric, window, r, kernels, interpret):
  merged, gid, wsum = kernels.local_window_merge(x, metric, w, window, r, interpret=interpret)
  return (merged, gid, wsum), (x, w, metric, gid, merged, wsum)


def _window_vjp_bwd(window, r, kernels, interpret, res, g):
  del window, r, kernels, interpret
  x, w, metric, gid, merged, wsum = res
  g_merged, _, g_wsum = g
  gx, gw = _segment_mean_grads(x, w, gid, merged, wsum, g_merged, g_wsum)
  # The matching is a discrete decision: no gradient flows into the metric (as in ToMe).
  return gx, gw, jnp.zeros_like(metric)


_window_vjp.defvjp(_window_vjp_fwd, _window_vjp_bwd)
