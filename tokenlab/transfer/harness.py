"""The tokenizer-transfer harness (issue 20): swap a trained LM's tokenizer, evaluate, adapt.

A source run is a `transformer_lm` trained with tokenizer T0 (experiments/transfer.py). For a
target tokenizer (spec 'KIND:VOCAB[@LANG]', trained and cached on the run's dataset like any
tokenizer, see `target_data_config`) and an initialiser (tokenlab/transfer/initializers.py):

1. `swap_tokenizer`: new parameters = the run's, with the input embedding rows and the output
   (lm_head) rows replaced by the initialiser's; every other array is the run's own.
2. `save_run`: they are written as a run (config.json + a step-0 checkpoint) under
   WORKDIR/<target>/<init>/swapped, so `tokenlab eval/sample` work on it and adaptation
   starts from it through `config.train.init_from`.
3. `evaluate`: bits per byte and per character on the held-out (validation) documents of the
   target data, packed exactly as the trainer's evaluation packs them (a document's first
   token is context only), zero-shot and after k steps of `adapt` (the trainer, on the target
   data's train split): 'embeddings' (config.train.freeze keeps every non-embedding array)
   or 'full'.
4. `tokens_per_char`: tokens per character of the same documents, under T0 and the new
   tokenizer: the sequence-length reduction.

`run_transfer` does all of it for lists of targets x initialisers x modes and writes one
table, WORKDIR/results.json and results.md (rows merged across invocations). A row 'T0' per
target is the untouched run on the target text with its own tokenizer (for a second
language: what not transferring gives).

Scored text differs slightly between tokenizers: the trainer's evaluation never scores a
document's first token (there is no BOS), and that token covers more characters under a
longer-token tokenizer; the table reports the scored characters so this stays visible.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from tokenlab.data.tokenizers import Tokenizer
from tokenlab.errors import TokenlabError
from tokenlab.transfer.initializers import Embeddings, get_initializer

PyTree = Any

# transformer_lm's embedding arrays: (vocab, d) input table and (d, vocab) output kernel.
EMBED_PATH = ("embed", "embedding")
UNEMBED_PATH = ("lm_head", "kernel")
# config.train.freeze of embeddings-only adaptation: every parameter but the two above.
FREEZE_ALL_BUT_EMBEDDINGS = r"^(?!embed/|lm_head/)"
MODES = ("embeddings", "full")
SUPPORTED_METHODS = ("transformer_lm",)


# --- embeddings in a parameter tree ------------------------------------------------------

def get_embeddings(params: Mapping[str, Any]) -> Embeddings:
  """The (V, d) input rows and (V, d) output rows (None when tied) of LM parameters."""
  table = np.asarray(params[EMBED_PATH[0]][EMBED_PATH[1]])
  head = params.get(UNEMBED_PATH[0])
  return Embeddings(table, None if head is None else np.asarray(head[UNEMBED_PATH[1]]).T)


def with_embeddings(params: Mapping[str, Any], emb: Embeddings) -> dict[str, Any]:
  """`params` with the embedding rows replaced by `emb`; every other leaf is the same object."""
  out = dict(params)
  out[EMBED_PATH[0]] = {**params[EMBED_PATH[0]], EMBED_PATH[1]: np.asarray(emb.input)}
  if UNEMBED_PATH[0] in params:
    if emb.output is None:
      raise TokenlabError("the model has an output layer but the initialiser gave no output "
                          "embeddings")
    out[UNEMBED_PATH[0]] = {**params[UNEMBED_PATH[0]],
                            UNEMBED_PATH[1]: np.ascontiguousarray(np.asarray(emb.output).T)}
  return out


# --- target tokenizers -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TargetSpec:
  """A target tokenizer: 'same' (the run's own), or kind + vocabulary [+ language]."""
  text: str
  kind: str = ""
  vocab_size: int = 0
  lang: str = ""

  @property
  def slug(self) -> str:
    """A directory name for the target ('bpe1024', 'sentencepiece512-de', 'same')."""
    if not self.kind:
      return "same"
    return f"{self.kind}{self.vocab_size}" + (f"-{self.lang}" if self.lang else "")


_SPEC = re.compile(r"^(?P<kind>[a-z_]+):(?P<vocab>\d+)(?:@(?P<lang>[A-Za-z_-]+))?$")


def parse_target(text: str) -> TargetSpec:
  """'same' | 'KIND:VOCAB' | 'KIND:VOCAB@LANG' (e.g. 'bpe:2048', 'sentencepiece:1024@de')."""
  from tokenlab.data import TOKENIZERS
  text = text.strip()
  if text == "same":
    return TargetSpec(text)
  m = _SPEC.match(text)
  if not m or m.group("kind") not in TOKENIZERS or m.group("kind") == "bytes":
    raise TokenlabError(f"--tokenizer '{text}': write KIND:VOCAB[@LANG] with KIND one of "
                        f"sentencepiece, bpe (e.g. bpe:2048, sentencepiece:1024@de), or 'same'")
  return TargetSpec(text, m.group("kind"), int(m.group("vocab")), m.group("lang") or "")


def target_data_config(data_cfg: ConfigDict, spec: TargetSpec) -> ConfigDict:
  """The run's data config with the target's tokenizer, vocabulary and language: the target
  tokenizer is then trained on (and cached for) that dataset like any other tokenizer."""
  from tokenlab.data import validate_data_config
  out = ConfigDict(copy.deepcopy(data_cfg.to_dict()))
  if not spec.kind:
    return out
  out.tokenizer, out.vocab_size = spec.kind, spec.vocab_size
  if spec.lang:
    if "lang" not in out.options:
      raise TokenlabError(f"--tokenizer {spec.text}: dataset '{out.name}' has no 'lang' "
                          f"option; drop @{spec.lang} or train the run on 'multilingual'")
    out.options.lang = spec.lang
  validate_data_config(out)
  return out


# --- held-out text and its evaluation ----------------------------------------------------

def held_out_documents(data_cfg: ConfigDict, split: str = "validation") -> list[bytes]:
  """The documents of a text data config's split, in stored order (what eval packs)."""
  from tokenlab.data import config as data_config
  from tokenlab.data import sources
  cfg = data_config.resolve(data_cfg)
  src = sources.data_source(cfg, split)
  doc = sources.document_fn(cfg)
  return [bytes(doc(src[i])) for i in range(len(src))]


def chars_per_token(tok: Tokenizer) -> np.ndarray:
  """Characters each token stands for, float (V,): its bytes that start a UTF-8 character (a
  token holding half a character counts the half that starts it), so sums over whole texts
  count characters exactly."""
  return np.array([sum(1 for b in tok.token_bytes(i) if b & 0xC0 != 0x80)
                   for i in range(tok.vocab_size)], np.float64)


def num_chars(data: bytes) -> int:
  return sum(1 for b in data if b & 0xC0 != 0x80)


def tokens_per_char(tok: Tokenizer, docs: Sequence[bytes]) -> float:
  """Tokens per character of `docs` (every token and character counted)."""
  tokens = sum(len(ids) for ids in tok.encode_batch(list(docs)))
  return tokens / max(sum(num_chars(d) for d in docs), 1)


def eval_batches(tok: Tokenizer, docs: Sequence[bytes], *, seq_len: int,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Batches of `docs` under `tok`, built as the trainer's evaluation builds them from a data
  config (tokenize, drop one-token documents, concatenate-and-split into rows of seq_len,
  pad the last batch with masked rows), from the pipeline's own pieces; for text whose
  tokenizer is not the data config's (T0 on the target language)."""
  import grain
  from tokenlab.data import pipeline
  docs = list(docs)
  keys = ["inputs", "targets", "target_bytes"]
  ds = grain.MapDataset.range(len(docs)).map(
      pipeline.TokenizeDocument(docs, tok, _as_bytes)).to_iter_dataset()
  ds = ds.filter(lambda ex: len(ex["inputs"]) > 0)
  ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={k: seq_len
                                                                        for k in keys})
  ds = ds.map(pipeline._finish_row)   # pylint: disable=protected-access (one packing, shared)
  ds = ds.batch(batch_size, drop_remainder=False, batch_fn=pipeline.PadBatch(batch_size))
  return iter(ds)


def _as_bytes(doc: bytes) -> bytes:
  return doc


_EVAL_STEPS: dict[tuple[str, str], Any] = {}


def evaluate(config: ConfigDict, params: PyTree, tok: Tokenizer,
             docs: Sequence[bytes]) -> dict[str, float]:
  """Bits per byte and per character of `docs` under (model of `config`, `params`, `tok`).

  Args:
    config: a run's config (model, data.seq_len, train.batch_size and compute_dtype, mesh).
    params: the model's parameters (numpy or jax arrays; vocab = tok.vocab_size or more).
    tok: the tokenizer the parameters' embedding rows belong to.
    docs: held-out documents (bytes).

  Returns:
    bits_per_byte, bits_per_char, loss (nats per scored token), scored_tokens,
    scored_bytes, scored_chars (the targets: every token but each document's first),
    tokens_per_char (all tokens of the documents).
  """
  import flax.linen as nn
  from tokenlab import registry
  from tokenlab.train import partitioning
  from tokenlab.train.mesh import make_mesh
  from tokenlab.train.step import make_eval_step
  mesh = make_mesh(config.mesh)
  rules = partitioning.rules_from_config(config.sharding_rules)
  # One jitted step per model and dtype, so the many evaluations of one comparison (same
  # shapes) compile once.
  key = (json.dumps(config.model.to_dict(), sort_keys=True, default=list),
         config.train.compute_dtype)
  if key not in _EVAL_STEPS:
    method = registry.build_method(config.model)
    _EVAL_STEPS[key] = jax.jit(make_eval_step(method, jnp.dtype(config.train.compute_dtype)))
  step = _EVAL_STEPS[key]
  chars = chars_per_token(tok)
  nats = tokens = nbytes = nchars = 0.0
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for batch in eval_batches(tok, docs, seq_len=config.data.seq_len,
                              batch_size=config.train.batch_size):
      mask = batch["loss_mask"]
      dev = {k: jax.device_put(v, partitioning.batch_sharding(mesh, rules, v.ndim))
             for k, v in batch.items()}
      metrics = step(params, dev, jax.random.key(0), None)
      nats += float(metrics["loss"].total)
      tokens += float(mask.sum())
      nbytes += float((batch["target_bytes"] * mask).sum())
      nchars += float((chars[batch["targets"]] * mask).sum())
  bits = nats / math.log(2.0)
  return {"bits_per_byte": bits / max(nbytes, 1.0), "bits_per_char": bits / max(nchars, 1.0),
          "loss": nats / max(tokens, 1.0), "scored_tokens": int(tokens),
          "scored_bytes": int(nbytes), "scored_chars": int(nchars),
          "tokens_per_char": tokens_per_char(tok, docs)}


def extend_vocabulary(params: Mapping[str, Any], new: Embeddings) -> dict[str, Any]:
  """`params` of a vocabulary of V0 tokens with `new.vocab_size` = T rows appended: ids V0 ..
  V0 + T - 1 (e.g. tool tokens). Input rows go after the embedding table's (V0, d) ->
  (V0 + T, d); output rows (T, d) after the lm_head kernel's columns (d, V0) -> (d, V0 + T)
  (`new.output` None: a tied model). Every other leaf is the same object. Works on numpy and
  on traced arrays (jnp.concatenate), so a method can extend inside its loss and gradients
  reach the new rows."""
  out = dict(params)
  table = params[EMBED_PATH[0]][EMBED_PATH[1]]
  out[EMBED_PATH[0]] = {**params[EMBED_PATH[0]], EMBED_PATH[1]: jnp.concatenate(
      [table, jnp.asarray(new.input, table.dtype)], axis=0)}
  if UNEMBED_PATH[0] in params:
    if new.output is None:
      raise TokenlabError("the model has an output layer but the new rows have no output "
                          "embeddings")
    kernel = params[UNEMBED_PATH[0]][UNEMBED_PATH[1]]
    out[UNEMBED_PATH[0]] = {**params[UNEMBED_PATH[0]], UNEMBED_PATH[1]: jnp.concatenate(
        [kernel, jnp.asarray(new.output, kernel.dtype).T], axis=1)}
  return out


# --- swapping and adapting ---------------------------------------------------------------

def _check_source(config: ConfigDict, where: str) -> None:
  if config.model.get("name") not in SUPPORTED_METHODS:
    raise TokenlabError(f"{where} holds a '{config.model.get('name')}' run; tokenizer transfer "
                        f"needs one of: {', '.join(SUPPORTED_METHODS)} (e.g. `tokenlab train "
                        f"--config experiments/transfer.py:size=small`)")
  if config.data.get("tokenizer") not in ("sentencepiece", "bpe", "bytes"):
    raise TokenlabError(f"{where} was trained without a text tokenizer")


_FRESH: dict[tuple[str, int], dict[str, Any]] = {}


def fresh_params(model_cfg: ConfigDict, seed: int) -> dict[str, Any]:
  """The model's own random initialisation (numpy, read-only), as training from scratch
  draws it. Remembered per (model config, seed): every initialiser of a comparison swaps in
  the same fresh rows, and each init is a trace and a compile."""
  import flax.linen as nn
  from tokenlab import registry
  key = (json.dumps(model_cfg.to_dict(), sort_keys=True, default=list), int(seed))
  if key not in _FRESH:
    method = registry.build_method(model_cfg)
    # Jitted: an eager init compiles each of the model's ops on its own (2 s per call on the
    # tiny model; the trainer's own init is jitted too).
    boxed = jax.jit(method.init)(jax.random.key(seed),
                                 {"inputs": jnp.zeros((1, 8), jnp.int32)})
    arrays = jax.tree.map(np.array, nn.meta.unbox(boxed))
    for a in jax.tree.leaves(arrays):
      a.flags.writeable = False   # shared by every caller: a write would change them all
    _FRESH[key] = arrays
  return _FRESH[key]


def swap_tokenizer(config: ConfigDict, params: PyTree, new_data: ConfigDict, init: str, *,
                   seed: int = 0, aux: Mapping[str, Any] | None = None
                   ) -> tuple[ConfigDict, dict[str, Any]]:
  """A trained run's config and parameters, moved to the tokenizer of `new_data`.

  Args:
    config: the source run's config (its data config names T0).
    params: the source run's parameters (nested dicts; transformer_lm).
    new_data: the target data config (tokenizer, vocabulary, dataset options).
    init: initialiser name (tokenlab/transfer/initializers.py).
    seed: seed of the fresh rows (the `random` baseline and rows no initialiser sets).
    aux: side data passed to the initialiser.

  Returns:
    (new config: data = new_data, model.vocab_size = the new tokenizer's; new parameters:
    the embedding rows the initialiser made, every other array the run's own).
  """
  from tokenlab.data import get_tokenizer
  old_tok, new_tok = get_tokenizer(config.data), get_tokenizer(new_data)
  old = get_embeddings(params)
  # Rows past the tokenizer's ids (a model vocabulary padded beyond it) are never targets
  # but do enter the softmax: they are carried over unchanged, after the new tokenizer's.
  pad = old.vocab_size - old_tok.vocab_size
  if pad < 0:
    raise TokenlabError(f"the run's model has {old.vocab_size} embedding rows for a tokenizer "
                        f"of {old_tok.vocab_size} tokens")
  new_config = ConfigDict(copy.deepcopy(config.to_dict()))
  new_config.data = ConfigDict(copy.deepcopy(new_data.to_dict()))
  new_config.model.vocab_size = new_tok.vocab_size + pad
  fresh = get_embeddings(fresh_params(new_config.model, seed))
  cut = lambda e, a, b: Embeddings(e.input[a:b], None if e.output is None else e.output[a:b])
  n = new_tok.vocab_size
  full_aux = {"source_data": config.data.to_dict(), "target_data": new_data.to_dict(),
              "seed": seed, **(aux or {})}
  made = get_initializer(init)(old_tok, cut(old, 0, old_tok.vocab_size), new_tok,
                               fresh=cut(fresh, 0, n), aux=full_aux)
  d = old.input.shape[1]
  if made.input.shape != (n, d) or (made.output is not None and made.output.shape != (n, d)):
    raise TokenlabError(f"initialiser '{init}' returned rows of shape {made.input.shape}, "
                        f"expected ({n}, {d})")
  tail = cut(old, old_tok.vocab_size, old.vocab_size)
  join = lambda a, b: np.concatenate([np.asarray(a, old.input.dtype), b])
  emb = Embeddings(join(made.input, tail.input),
                   None if made.output is None else join(made.output, tail.output))
  return new_config, with_embeddings(params, emb)


def save_run(config: ConfigDict, params: PyTree, workdir: str) -> None:
  """Writes `params` as a run: WORKDIR/config.json and a step-0 checkpoint of a full train
  state (fresh optimizer state), replacing what a previous swap wrote there."""
  from tokenlab import registry
  from tokenlab import data as data_lib
  from tokenlab.train import partitioning
  from tokenlab.train.checkpoint import Checkpointer
  from tokenlab.train.mesh import make_mesh
  from tokenlab.train.optimizer import make_optimizer
  from tokenlab.train.state import TrainState, method_init_fn, state_layout
  from tokenlab.train.workdir import Workdir
  if os.path.isdir(workdir):
    shutil.rmtree(workdir)   # derived data: a new swap replaces it whole
  method = registry.build_method(config.model)
  mesh = make_mesh(config.mesh)
  rules = partitioning.rules_from_config(config.sharding_rules)
  tx = make_optimizer(config.optimizer, config.train.steps, config.train.clip_grad_norm, "")
  micro = config.train.batch_size // config.train.grad_accum_steps
  example = data_lib.batch_spec(config.data, micro)
  dtype = jnp.dtype(config.train.param_dtype)
  # Only the layout is traced (nothing compiles): the parameters go straight into their
  # shardings and the fresh optimizer state is built from them.
  _, shardings = state_layout(method_init_fn(method, example), tx, mesh, rules, dtype)
  params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, dtype), s), params,
                        shardings.params)
  with jax.set_mesh(mesh):
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  wd = Workdir(workdir)
  with wd.open():
    ckpt = Checkpointer(wd.checkpoints, keep=1, async_save=False)
    ckpt.save(0, state)
    ckpt.close()
    wd.write_config(config)


def adapt_config(config: ConfigDict, swapped_dir: str, *, steps: int, mode: str,
                 lr: float = 0.0, progress: bool = False) -> ConfigDict:
  """The training config of k steps of adaptation from the swapped run in `swapped_dir`."""
  from tokenlab import config as config_lib
  if mode not in MODES:
    raise TokenlabError(f"--mode {mode}: use one of {', '.join(MODES)}")
  c = ConfigDict(copy.deepcopy(config.to_dict()))
  config_lib.set_schedule(c, steps=steps, batch_size=c.train.batch_size,
                          lr=lr or c.optimizer.lr)
  c.train.init_from = os.path.abspath(swapped_dir)
  c.train.freeze = FREEZE_ALL_BUT_EMBEDDINGS if mode == "embeddings" else ""
  c.train.eval_every = 0        # the trainer evaluates once, at the end
  c.train.eval_batches = 0
  c.train.progress = progress
  c.checkpoint.keep = 1
  c.checkpoint.async_save = False
  return c


def adapt(config: ConfigDict, swapped_dir: str, workdir: str, *, steps: int, mode: str,
          lr: float = 0.0, progress: bool = False) -> dict[str, Any]:
  """Trains `steps` steps from the swapped run ('embeddings': only embedding rows move;
  'full': everything) on the target data's train split; returns the final parameters. A
  finished adaptation with the same config is reused (the trainer resumes it at its end)."""
  from tokenlab.train.init_from import load_params
  from tokenlab.train.loop import train
  train(adapt_config(config, swapped_dir, steps=steps, mode=mode, lr=lr, progress=progress),
        workdir)
  return load_params(workdir)


# --- the whole comparison ----------------------------------------------------------------

def run_transfer(source: str, targets: Sequence[str], inits: Sequence[str], workdir: str, *,
                 steps: int = 100, modes: Sequence[str] = MODES, lr: float = 0.0,
                 seed: int = 0, aux: Mapping[str, Any] | None = None,
                 progress: bool = False, log=print) -> list[dict[str, Any]]:
  """Every target tokenizer x initialiser (x adaptation mode) on the run in `source`.

  Writes WORKDIR/<target>/<init>/{swapped, adapt_<mode>_<k>} runs and the table
  WORKDIR/results.{json,md} (after each row; rows of earlier invocations are kept unless this
  one replaces them). An initialiser that refuses a target (a TokenlabError from it, e.g.
  wechsel on an English target) gets a row with zero_shot = {'error': why} ('n/a' in the
  table) and no adaptation. Returns this invocation's rows.
  """
  from tokenlab.data import get_tokenizer
  from tokenlab.train.inference import load_config_from_workdir
  from tokenlab.train.init_from import load_params
  if steps < 0:
    raise TokenlabError(f"--steps {steps} must be >= 0 (0 = zero-shot only)")
  for mode in modes:
    if mode not in MODES:
      raise TokenlabError(f"--mode {mode}: use one of {', '.join(MODES)}")
  specs = [parse_target(t) for t in targets]
  for name in inits:
    get_initializer(name)   # unknown names fail before any work
  config = load_config_from_workdir(source)
  _check_source(config, source)
  params = load_params(source)
  old_tok = get_tokenizer(config.data)
  rows = []
  for spec in specs:
    new_data = target_data_config(config.data, spec)
    new_tok = get_tokenizer(new_data)
    docs = held_out_documents(new_data)
    base_tpc = tokens_per_char(old_tok, docs)
    common = {"source": os.path.abspath(source), "target": spec.text, "target_slug": spec.slug,
              "new_vocab": new_tok.vocab_size, "old_vocab": old_tok.vocab_size,
              "held_out_docs": len(docs), "steps": steps}
    try:
      base = evaluate(config, params, old_tok, docs)
    except TokenlabError as e:   # T0 cannot encode the target text (no byte fallback)
      base = {"error": str(e)}
    rows.append(_save_row(workdir, {**common, "init": "T0", "tokens_per_char": base_tpc,
                                    "length_ratio": 1.0, "zero_shot": base}))
    log(_row_line(rows[-1]))
    for init in inits:
      where = os.path.join(workdir, spec.slug, init)
      try:
        new_config, new_params = swap_tokenizer(config, params, new_data, init, seed=seed,
                                                aux=aux)
      except TokenlabError as e:
        # An initialiser that refuses this target (wechsel on the source's own language,
        # identity on another vocabulary) leaves a row saying why; the table goes on.
        tpc = tokens_per_char(new_tok, docs)
        rows.append(_save_row(workdir, {**common, "init": init, "tokens_per_char": tpc,
                                        "length_ratio": tpc / base_tpc,
                                        "zero_shot": {"error": str(e)}}))
        log(_row_line(rows[-1]) + f": refused: {e}")
        continue
      save_run(new_config, new_params, os.path.join(where, "swapped"))
      row = {**common, "init": init, "tokens_per_char": tokens_per_char(new_tok, docs),
             "zero_shot": evaluate(new_config, new_params, new_tok, docs)}
      row["length_ratio"] = row["tokens_per_char"] / base_tpc
      for mode in (modes if steps else ()):
        adapted = adapt(new_config, os.path.join(where, "swapped"),
                        os.path.join(where, f"adapt_{mode}_{steps}"), steps=steps, mode=mode,
                        lr=lr, progress=progress)
        row[mode] = evaluate(new_config, adapted, new_tok, docs)
      rows.append(_save_row(workdir, row))
      log(_row_line(row))
  paths = write_results(workdir, [])
  log(f"wrote {paths[0]} and {paths[1]}")
  return rows


def _key(row: Mapping[str, Any]) -> tuple:
  return (row["source"], row["target"], row["init"], row["steps"])


def _save_row(workdir: str, row: dict[str, Any]) -> dict[str, Any]:
  write_results(workdir, [row])
  return row


def write_results(workdir: str, rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
  """Merges `rows` into WORKDIR/results.json (same source, target, init and steps: replaced)
  and rewrites results.md from it; returns both paths."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "results.json")
  old = []
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f).get("rows", [])
  keys = {_key(r) for r in rows}
  merged = [r for r in old if _key(r) not in keys] + list(rows)
  with open(path + ".tmp", "w") as f:
    json.dump({"rows": merged}, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)
  md = os.path.join(workdir, "results.md")
  with open(md, "w") as f:
    f.write(results_markdown(merged))
  return path, md


def _cell(metrics: Mapping[str, Any] | None) -> str:
  if not metrics:
    return "-"
  if "error" in metrics:
    return "n/a"
  return f"{metrics['bits_per_char']:.3f} / {metrics['bits_per_byte']:.3f}"


def results_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  """One markdown table: a row per (target, initialiser, k); cells 'bits/char / bits/byte'."""
  lines = ["| target tokenizer | init | k | tokens/char | length vs T0 | scored chars | "
           "zero-shot bpc / bpb | embeddings-only k | full k |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    zs = r.get("zero_shot") or {}
    lines.append(f"| {r['target']} | {r['init']} | {r['steps'] if r['init'] != 'T0' else '-'} "
                 f"| {r['tokens_per_char']:.3f} | {r['length_ratio']:.3f} | "
                 f"{zs.get('scored_chars', '-')} | {_cell(zs)} | {_cell(r.get('embeddings'))} "
                 f"| {_cell(r.get('full'))} |")
  return "\n".join(lines) + "\n"


def _row_line(row: Mapping[str, Any]) -> str:
  parts = [f"{row['target']:>24} {row['init']:>16}: tokens/char {row['tokens_per_char']:.3f} "
           f"({row['length_ratio']:.3f} x T0)", f"zero-shot {_cell(row.get('zero_shot'))}"]
  parts += [f"{m} {_cell(row[m])}" for m in MODES if m in row]
  return ", ".join(parts) + " (bits/char / bits/byte)"
