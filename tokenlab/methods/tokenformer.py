"""TokenFormer (Wang et al., "TokenFormer: Rethinking Transformer Scaling with Tokenized Model
Parameters", arXiv 2410.23168; reference code Haiyang-W/TokenFormer,
megatron/model/tokenformer.py).

Every linear projection of a decoder layer becomes a Pattention layer (tokenlab.nn.pattention):
input tokens attend to n learnable key/value *parameter tokens* through the modified softmax
Theta(A) = GeLU(A / ||A_i||_2 * sqrt(n)). Token-token attention (RoPE, causal) stays as it is.
Because a layer's size is its number of parameter tokens, a trained model grows by appending
key/value tokens and keeps training (progressive scaling), instead of retraining from scratch.

Layer (pre-norm, as the reference):
  h = x + P_out(Attn(P_q(n1(x)), P_k(n1(x)), P_v(n1(x))))
  y = h + P_ffn(n2(h))
q/k/v use `qkv_tokens`, the output projection `proj_tokens`, the feed-forward layer (a single
Pattention d -> d: Theta is its non-linearity) `ffn_tokens`. Embedding and output head are
ordinary (the reference keeps them too).

Follows the paper / reference: Pattention for q, k, v, output and feed-forward; Theta =
l2-norm * sqrt(n), then exact GeLU ('l2_norm_gelu'); no biases; growth copies the old tokens
into the first slots of each layer.
Chosen here (stated as such):
* Growth initialisation, `grow_init`: the paper says the new key/value tokens start at zero.
  Keys AND values at zero is a stationary point: the new tokens' scores are 0, GeLU(0) = 0
  hides their values, and d/dK_new is proportional to V_new = 0, so they never receive a
  gradient (tests/test_tokenformer.py shows it). The default `zero_keys` zeroes only the new
  keys (the function is still preserved, since GeLU(0) = 0 hides any value) and gives new
  values the fresh init, so gradients reach the new keys, as LoRA does with one zero factor.
  `zeros` is the literal recipe; `fresh` is the reference code's incremental loader (new
  tokens keep their random init; the function is not preserved).
* `norm_tokens`: Theta's sqrt(n) uses the layer's own n by default (the reference). Zero keys
  leave ||A_i|| unchanged but sqrt(n_new) rescales every old score, so a grown model computes
  the old function exactly only with the factor held at the old counts; `tokenlab grow` holds
  it (`--scale held`, default) or not (`--scale new`, the reference's behaviour).
* RMSNorm with a scale (the reference uses parameter-free LayerNorm), uniform normal(0.02)
  init for keys and values (the reference scales value init with depth): tokenlab's defaults.

`tokenlab grow SRC --workdir DST --factor 4 --steps N` builds the grown run from SRC's
config (token counts x factor, `norm_tokens` held, `train.init_from=SRC`) and trains it;
`TokenFormer.adopt_params` does the growth when the trainer loads SRC's parameters.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

from tokenlab.errors import ConfigError, TokenlabError
from tokenlab.method import PyTree
from tokenlab.methods.transformer_lm import TransformerLM
from tokenlab.nn.attention import dot_product_attention
from tokenlab.nn.layers import DenseGeneral, Embed, RMSNorm, rope
from tokenlab.nn.pattention import Pattention, grow_parameter_tokens
from tokenlab.registry import register_method

GROW_INITS = ("zero_keys", "zeros", "fresh")
TOKEN_PARAMS = ("key_tokens", "value_tokens")
KINDS = ("qkv", "proj", "ffn")


@dataclasses.dataclass(frozen=True)
class TokenFormerConfig:
  vocab_size: int = 256
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  qkv_tokens: int = 192         # parameter tokens of each of the q, k, v Pattentions
  proj_tokens: int = 192        # ... of the attention output Pattention
  ffn_tokens: int = 768         # ... of the feed-forward Pattention
  norm_tokens: tuple = ()       # (qkv, proj, ffn) n held in Theta's sqrt(n); () = own counts
  grow_init: str = "zero_keys"  # new tokens when adopting a smaller run: zero_keys|zeros|fresh
  rope_theta: float = 10000.0
  tie_embeddings: bool = False
  scan_layers: bool = False

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  def tokens(self) -> dict[str, int]:
    return dict(zip(KINDS, (self.qkv_tokens, self.proj_tokens, self.ffn_tokens)))

  def norm_counts(self) -> dict[str, int]:
    """n used in sqrt(n) per kind (the held counts, else the layer's own)."""
    return dict(zip(KINDS, self.norm_tokens)) if self.norm_tokens else self.tokens()


class TokenFormerBlock(nn.Module):
  """x + P_out(attention(P_q, P_k, P_v)); + P_ffn. (batch, length, d_model) in and out."""
  cfg: TokenFormerConfig

  @nn.compact
  def __call__(self, x, positions=None, segment_ids=None):
    cfg, norm = self.cfg, self.cfg.norm_counts()
    b, n, d = x.shape
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    h = RMSNorm(name="attn_norm")(x)
    heads = lambda name: Pattention(cfg.qkv_tokens, d, norm["qkv"], name=name)(h).reshape(
        b, n, cfg.num_heads, cfg.head_dim)
    q, k, v = heads("query"), heads("key"), heads("value")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(n), (b, n))
    q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    att = dot_product_attention(q, k, v, causal=True, segment_ids=segment_ids)
    x = x + Pattention(cfg.proj_tokens, d, norm["proj"], name="out")(att.reshape(b, n, d))
    h = RMSNorm(name="mlp_norm")(x)
    return x + Pattention(cfg.ffn_tokens, d, norm["ffn"], name="ffn")(h)


class _ScanBlock(nn.Module):
  cfg: TokenFormerConfig

  @nn.compact
  def __call__(self, x, positions, segment_ids):
    return TokenFormerBlock(self.cfg, name="block")(x, positions, segment_ids), None


class TokenFormerModule(nn.Module):
  """tokens (batch, length) -> logits (batch, length, vocab)."""
  cfg: TokenFormerConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None):
    cfg = self.cfg
    embed = Embed(cfg.vocab_size, cfg.d_model, name="embed")
    x = embed(tokens)
    if cfg.scan_layers:   # parameters stacked (layers, n, d): compile time flat in depth
      scanned = nn.scan(_ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, name="layers")(x, positions, segment_ids)
    else:
      for i in range(cfg.num_layers):
        x = TokenFormerBlock(cfg, name=f"layer_{i}")(x, positions, segment_ids)
    x = RMSNorm(name="final_norm")(x)
    if cfg.tie_embeddings:
      return embed.attend(x)
    return DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), name="lm_head")(x)


@register_method("tokenformer")
class TokenFormer(TransformerLM):
  """Next-token LM whose projections are Pattention layers; grows by adding parameter tokens."""
  Config = TokenFormerConfig

  def __init__(self, config: TokenFormerConfig):
    if config.grow_init not in GROW_INITS:
      raise ConfigError(f"config.model.grow_init='{config.grow_init}' unknown; use one of "
                        f"{GROW_INITS}")
    if config.norm_tokens and len(config.norm_tokens) != 3:
      raise ConfigError(f"config.model.norm_tokens={config.norm_tokens} must be () or three "
                        f"counts (qkv, proj, ffn)")
    if config.d_model % config.num_heads:
      raise ConfigError(f"config.model.d_model={config.d_model} is not divisible by "
                        f"num_heads={config.num_heads}")
    self.config = config
    self.module = TokenFormerModule(config)

  def adopt_params(self, fresh: PyTree, loaded: PyTree) -> PyTree:
    """Progressive scaling: every parameter of `loaded` (a smaller TokenFormer) is copied;
    parameter tokens with fewer slots fill the first slots and the new slots are set by
    `grow_init`. Parameters absent from `loaded` keep their fresh init."""
    flat_fresh = traverse_util.flatten_dict(fresh)
    flat_loaded = traverse_util.flatten_dict(loaded)
    out = {}
    for path, new in flat_fresh.items():
      old = flat_loaded.get(path)
      if old is None:
        out[path] = new
      elif tuple(old.shape) == tuple(new.shape):
        out[path] = jnp.asarray(old, new.dtype)
      elif path[-1] in TOKEN_PARAMS:
        zero = (self.config.grow_init == "zeros"
                or (self.config.grow_init == "zero_keys" and path[-1] == "key_tokens"))
        try:
          out[path] = grow_parameter_tokens(old, new, zero=zero)
        except ValueError as e:
          raise TokenlabError(f"{'/'.join(path)}: {e}; keep d_model, layers and heads of the "
                              f"run you grow from") from None
      else:
        raise TokenlabError(f"{'/'.join(path)} has shape {tuple(old.shape)} in the checkpoint "
                            f"and {tuple(new.shape)} here; TokenFormer grows only the number "
                            f"of parameter tokens (keep d_model, vocab_size, layers)")
    return traverse_util.unflatten_dict(out)

  def flops_per_token(self, seq_len: int) -> float:
    """6 x matmul parameters (each Pattention: n (d_in + d_out), two matmuls) + causal
    attention over (seq_len + 1) / 2 keys, forward + backward; Theta's norm is negligible."""
    c = self.config
    per_layer = 2 * c.d_model * (3 * c.qkv_tokens + c.proj_tokens + c.ffn_tokens)
    matmul_params = c.num_layers * per_layer + c.d_model * c.vocab_size
    attention = c.num_layers * 4 * c.d_model * (seq_len + 1) / 2
    return 6.0 * matmul_params + 3.0 * attention


# --- progressive scaling: the grown run's config and `tokenlab grow` -------------------------

def grown_config(src, *, src_workdir: str, factor: float = 0.0, qkv_tokens: int = 0,
                 proj_tokens: int = 0, ffn_tokens: int = 0, scale: str = "held",
                 grow_init: str = "", steps: int = 0):
  """The config of a run grown from `src` (the config of the run in `src_workdir`).

  Token counts: explicit counts, else the source's times `factor`. `scale='held'` keeps
  Theta's sqrt(n) at the source's counts (the grown model starts as exactly the source's
  function); 'new' uses the grown counts (the reference code). The grown run starts from the
  source's latest checkpoint (`train.init_from`); `steps` > 0 sets a new step budget.
  """
  from tokenlab.config import set_schedule
  if src.model.name != "tokenformer":
    raise TokenlabError(f"{src_workdir} is a '{src.model.name}' run; `tokenlab grow` grows "
                        f"TokenFormer runs (config.model.name='tokenformer')")
  if scale not in ("held", "new"):
    raise ConfigError(f"--scale {scale}: use 'held' (exact function at growth) or 'new'")
  c = src.copy_and_resolve_references()   # unlocked: the grown run's keys are set below
  m = c.model
  old = {k: int(m[f"{k}_tokens"]) for k in KINDS}
  given = dict(zip(KINDS, (qkv_tokens, proj_tokens, ffn_tokens)))
  new = {k: given[k] or (round(old[k] * factor) if factor else old[k]) for k in KINDS}
  for k in KINDS:
    if new[k] < old[k]:
      raise ConfigError(f"{k}_tokens {new[k]} < {old[k]} of the source: growth only adds tokens")
  if new == old:
    raise ConfigError("nothing to grow: give --factor F (> 1) or larger --qkv_tokens / "
                      "--proj_tokens / --ffn_tokens")
  held = tuple(m.get("norm_tokens") or ()) or tuple(old[k] for k in KINDS)
  for k in KINDS:
    m[f"{k}_tokens"] = new[k]
  m.norm_tokens = held if scale == "held" else ()
  if grow_init:
    m.grow_init = grow_init
  c.train.init_from = os.path.abspath(src_workdir)
  if steps:   # as many logs, evals and checkpoints per run as the source had
    t = src.train
    per_run = lambda every: max(t.steps // max(every, 1), 1)
    set_schedule(c, steps=steps, batch_size=t.batch_size, lr=c.optimizer.lr,
                 logs=per_run(t.log_every), evals=per_run(t.eval_every or t.steps),
                 checkpoints=per_run(src.checkpoint.every_steps))
  return c


def grow_main(argv: list[str]) -> int:
  """`tokenlab grow SRC --workdir DST [--factor F | --qkv-tokens N ...] [--steps N]
  [--scale held|new] [--init zero_keys|zeros|fresh] [--dry-run] [--config.a.b=v ...]`."""
  from tokenlab import config as config_lib
  from tokenlab.train.inference import load_config_from_workdir
  from tokenlab.argparsing import Parser
  parser = Parser(
      prog="tokenlab grow", epilog="example:\n  tokenlab grow runs/tf --workdir runs/tf_x4 "
                                   "--factor 4\n",
      description="Grow a trained TokenFormer run by appending parameter tokens, then train "
                  "the grown model (re-running the same command resumes it).")
  parser.add_argument("src", help="workdir of the trained TokenFormer run to grow")
  parser.add_argument("--workdir", required=True, help="workdir of the grown run")
  parser.add_argument("--factor", type=float, default=0.0,
                      help="multiply every layer's parameter-token count by F")
  for k in KINDS:
    parser.add_argument(f"--{k}_tokens", type=int, default=0, help=f"new {k} token count")
  parser.add_argument("--steps", type=int, default=0, help="step budget of the grown run "
                      "(default: the source's); logs, evals and checkpoints per run as the "
                      "source's")
  parser.add_argument("--scale", default="held", choices=("held", "new"),
                      help="Theta's sqrt(n): held at the source's counts (exact function at "
                           "growth, default) or the new counts (the reference code)")
  parser.add_argument("--init", default="", choices=("",) + GROW_INITS,
                      help="new tokens: zero_keys (default), zeros, fresh")
  parser.add_argument("--dry_run", action="store_true",
                      help="print what changes and write nothing")
  args, overrides = parser.parse_with_overrides(argv)
  if os.path.abspath(args.src) == os.path.abspath(args.workdir):
    raise TokenlabError("--workdir must differ from the source run's workdir")
  src = load_config_from_workdir(args.src)
  config = grown_config(src, src_workdir=args.src, factor=args.factor,
                        qkv_tokens=args.qkv_tokens, proj_tokens=args.proj_tokens,
                        ffn_tokens=args.ffn_tokens, scale=args.scale, grow_init=args.init,
                        steps=args.steps)
  config_lib.apply_overrides(config, overrides)
  diff = config_lib.config_diff(src, config)
  flat_src, flat_new = config_lib.flatten(src), config_lib.flatten(config)
  print("grown run: " + ", ".join(f"{k}: {flat_src.get(k)} -> {flat_new.get(k)}"
                                  for k in diff))
  if args.dry_run:
    return 0
  from tokenlab.train.loop import train
  result = train(config, args.workdir)
  keys = [k for k in sorted(result) if k.startswith(("eval/", "train/loss"))]
  print("final: " + ", ".join(f"{k}={result[k]:.4g}" for k in keys
                              if isinstance(result[k], float)))
  print(f"workdir: {args.workdir}")
  return 0

