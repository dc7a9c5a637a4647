"""Re-initialised tool tokens for a frozen LM ("Re-Initialization Token Learning
for Tool-Augmented Large Language Models", arXiv 2506.14248; the ToolkenGPT setting of Hao
et al. 2023).

The setting. A language model is trained on text and then frozen. Each tool t gets one new
token <t> ("toolken") appended to the vocabulary; the model calls a tool by predicting its
token at the call position, so tool calling is next-token prediction over words + tools. Only
the tool rows are learnt, from a few demonstrations per tool.

The method, in the paper's order:

1. Prior embeddings. For every tool, the text of its name and description is tokenized with
   the LM's own tokenizer and the LM's embedding rows of those tokens are pooled (mean):
   prior_in[t] = mean_i E[w_i], prior_out[t] = mean_i U[w_i] (E the input table, U the output
   rows = lm_head kernel transposed). `prior_matrix` is the pooling as a (T, V0) matrix A, so
   the prior is A @ E and A @ U.
2. Re-initialisation. The tool rows start at the prior (`init='prior'`) instead of at random
   (`init='random'`: the model's own initialiser, ToolkenGPT's start).
3. Regularised token learning. Loss = next-token cross-entropy of the demonstrations over the
   extended vocabulary (every position: a tool token must also *not* be predicted where no
   call happens) + reg_weight * ||W - W_prior||^2 (squared Frobenius norm over the tool rows,
   input and output), so the learnt rows stay near the word space they started in.
   reg_weight = 0 is plain fine-tuning of the rows (tested).
4. Only the tool rows train: parameters are {'lm': the frozen LM, 'prior': the frozen prior,
   'tools': the learnt rows}; the forward pass appends the tool rows to the LM's embedding
   table and lm_head (tokenlab.transfer.harness.extend_vocabulary) and runs the LM itself
   (transformer_lm, unchanged); `config.train.freeze = FREEZE` keeps 'lm' and 'prior'
   bit-identical (tested after training).

Follows the paper: prior = mean pooling of the name/description token embeddings under the
LM's tokenizer; initialisation at the prior; an L2 pull toward it; the LM frozen; the toolken
predicted at the call position; tool-selection accuracy as the metric.
Simplified / chosen here, and why: (a) the LM is a small transformer_lm trained here on a
synthetic corpus (`ToolTask`) whose text mentions the tools by name ("q : what is 3 plus 4 ?
use the calculator 3 4"): it stands in for an LLM that knows from its pretraining which
words go with which tool; the corpus names the wrong tool in `name_noise` of the documents,
so that knowledge is imperfect; (b) a word-level tokenizer (`WordTokenizer`, one token per
word), so a pooled row is a mean of word rows as with the paper's word-piece tokens; (c) the
tool token has an input row as well as an output row (the brief of issue 20: after the call
the arguments follow the tool token, so the input row is used); ToolkenGPT's toolkens are
output rows only; (d) the regulariser is the squared norm of the difference (the paper's
exact norm and weight were not at hand; only the abstract and this project's summary were);
(e) a tool call's arguments and results are not executed: the claim is about selection.

Also here: `@register_initializer("tool_tokens")`, the same prior as an initialiser of the
transfer harness (new tokens with a description in aux['descriptions'] get the pooled rows of
that text; shared tokens keep their rows), and the task `ToolTask` with its trainer
iterators (`iterator_fns`, config.data.name = 'method').
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.synthetic import StepIterator
from tokenlab.data.tokenizers.base import Tokenizer
from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.registry import register_method
from tokenlab.transfer.harness import extend_vocabulary
from tokenlab.transfer.initializers import Embeddings, register_initializer, shared_tokens

STAGES = ("pretrain", "tools")
INITS = ("prior", "random")
# config.train.freeze of the tools stage: everything but the tool rows.
FREEZE = r"^(lm|prior)/"

# --- the task: queries that need one of six tools --------------------------------------------

SLOTS = {
    "N": [str(i) for i in range(1, 21)],
    "CITY": "paris berlin tokyo cairo lima oslo rome delhi".split(),
    "COUNTRY": "france japan peru egypt norway india italy chile".split(),
    "UNIT": "km miles kg pounds meters feet litres cups".split(),
    "WORD": "water bread house friend book river".split(),
    "LANG": "french german spanish".split(),
    "MONTH": "january march may july september november".split(),
}


@dataclasses.dataclass(frozen=True)
class Tool:
  """A tool: its name and description (the prior's text) and the query templates that need
  it (upper-case words are slots filled from SLOTS; they are the call's arguments)."""
  name: str
  description: str
  templates: tuple[str, ...]


TOOLS = (
    Tool("calculator", "adds subtracts and multiplies numbers",
         ("what is N plus N", "N times N is how much", "subtract N from N")),
    Tool("unit converter", "changes a quantity from one unit to another",
         ("how many UNIT in N UNIT", "convert N UNIT to UNIT", "N UNIT is how many UNIT")),
    Tool("weather service", "reports rain sun and temperature for a city",
         ("will it rain in CITY tomorrow", "how warm is CITY today", "is it sunny in CITY")),
    Tool("translator", "says a word in another language",
         ("how do you say WORD in LANG", "translate WORD to LANG",
          "what is the LANG word for WORD")),
    Tool("calendar", "knows dates days and months",
         ("what day is N MONTH", "how many days until N MONTH", "is N MONTH a weekend")),
    Tool("atlas", "looks up facts about countries",
         ("what is the capital of COUNTRY", "how many people live in COUNTRY",
          "which language is spoken in COUNTRY")),
)
SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = 0, 1, 2


class WordTokenizer(Tokenizer):
  """One token per whitespace-separated word (ids 0-2 are <pad>, <bos>, <eos>); a token's
  bytes are the word and a space. The LM's own tokenizer in this task."""

  def __init__(self, words: Sequence[str]):
    self.words = list(SPECIALS) + list(words)
    self.ids = {w: i for i, w in enumerate(self.words)}
    self.vocab_size = len(self.words)

  def encode(self, data: bytes) -> np.ndarray:
    text = data.decode() if isinstance(data, bytes) else data
    try:
      return np.asarray([self.ids[w] for w in text.split()], np.int32)
    except KeyError as e:
      raise ConfigError(f"word {e} is not in the task's vocabulary") from None

  def token_bytes(self, token_id: int) -> bytes:
    return b"" if token_id < len(SPECIALS) else (self.words[token_id] + " ").encode()


def tool_token(tool: Tool) -> str:
  return "<" + tool.name.replace(" ", "_") + ">"


@dataclasses.dataclass(frozen=True)
class ToolTask:
  """Word-level tool-calling text. Documents (all start with <bos>, end with <eos>):

    pretrain  'q : QUERY ? use the NAME ARGS'  (the tool named in words; with probability
              name_noise another tool's name) and 'the NAME DESCRIPTION'
    tools     'q : QUERY ? use the <TOOL> ARGS' (the tool token at the call position)

  ARGS are the query's slot values in order. `base_vocab` has no tool tokens; the tool
  tokens are ids base_vocab .. base_vocab + T - 1 (`full_tokenizer`).
  """
  tools: tuple[Tool, ...] = TOOLS
  seq_len: int = 20
  name_noise: float = 0.25
  description_fraction: float = 0.2

  @property
  def num_tools(self) -> int:
    return len(self.tools)

  def words(self) -> list[str]:
    ws = {"q", ":", "?", "use", "the"}
    for t in self.tools:
      ws.update(t.name.split() + t.description.split())
      for tpl in t.templates:
        ws.update(w for w in tpl.split() if w not in SLOTS)
    for values in SLOTS.values():
      ws.update(values)
    return sorted(ws)

  @property
  def tokenizer(self) -> WordTokenizer:
    return WordTokenizer(self.words())

  @property
  def base_vocab(self) -> int:
    return self.tokenizer.vocab_size

  @property
  def full_tokenizer(self) -> WordTokenizer:
    return WordTokenizer(self.words() + [tool_token(t) for t in self.tools])

  def prior_texts(self) -> list[str]:
    """The text each tool's prior pools: its name and description."""
    return [f"{t.name} {t.description}" for t in self.tools]

  def query(self, rng: np.random.Generator, tool: int, template: int | None = None,
            templates: Sequence[int] | None = None) -> tuple[str, list[str]]:
    """(query text, argument words) of a random query of `tool` (of template `template`, or
    of one drawn from `templates`, default all)."""
    tpls = self.tools[tool].templates
    if template is None and templates is not None:
      template = templates[rng.integers(len(templates))]
    tpl = tpls[rng.integers(len(tpls)) if template is None else template]
    words, args = [], []
    for w in tpl.split():
      if w in SLOTS:
        w = SLOTS[w][rng.integers(len(SLOTS[w]))]
        args.append(w)
      words.append(w)
    return " ".join(words), args

  def call_text(self, query: str, args: Sequence[str], tool_words: str) -> str:
    return f"q : {query} ? use the {tool_words} {' '.join(args)}".rstrip()

  def pretrain_document(self, rng: np.random.Generator) -> str:
    tool = int(rng.integers(self.num_tools))
    if rng.random() < self.description_fraction:
      t = self.tools[tool]
      return f"the {t.name} {t.description}"
    q, args = self.query(rng, tool)
    named = tool
    if rng.random() < self.name_noise:
      named = int((tool + 1 + rng.integers(self.num_tools - 1)) % self.num_tools)
    return self.call_text(q, args, self.tools[named].name)

  def few_shot(self, shots: int, seed: int, templates: Sequence[int] | None = None
               ) -> list[tuple[str, list[str], int]]:
    """`shots` demonstrations per tool (query, args, tool), drawn by `seed` (from the
    template indices `templates` only, default all)."""
    rng = np.random.default_rng((seed, 17))
    return [(*self.query(rng, t, templates=templates), t)
            for t in range(self.num_tools) for _ in range(shots)]

  def eval_queries(self, per_tool: int = 48, data_seed: int = 0,
                   templates: Sequence[int] | None = None
                   ) -> list[tuple[str, list[str], int]]:
    """Held-out queries (balanced over tools and over the template indices `templates`,
    default all), fixed by `data_seed`."""
    rng = np.random.default_rng((data_seed, 99))
    out = []
    for t in range(self.num_tools):
      tpls = (range(len(self.tools[t].templates)) if templates is None else templates)
      tpls = list(tpls)
      for i in range(per_tool):
        out.append((*self.query(rng, t, tpls[i % len(tpls)]), t))
    return out

  def encode_rows(self, texts: Sequence[str], tokenizer: Tokenizer | None = None
                  ) -> dict[str, np.ndarray]:
    """LM rows {inputs, targets, loss_mask} (n, seq_len) of <bos> text <eos>, padded."""
    tok = tokenizer or self.full_tokenizer
    n, L = len(texts), self.seq_len
    ids = np.full((n, L + 1), PAD, np.int32)
    mask = np.zeros((n, L), np.float32)
    for i, text in enumerate(texts):
      row = np.concatenate([[BOS], tok.encode(text.encode()), [EOS]])
      if len(row) > L + 1:
        raise ConfigError(f"a document of {len(row)} tokens does not fit seq_len={L}")
      ids[i, :len(row)] = row
      mask[i, :len(row) - 1] = 1.0
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask}

  def call_rows(self, examples: Sequence[tuple[str, list[str], int]]) -> dict[str, np.ndarray]:
    """Rows of tool-token demonstrations plus `call_pos` (the input position whose target is
    the tool token) and `tool` (its index)."""
    v0 = self.base_vocab
    toks = [tool_token(self.tools[t]) for _, _, t in examples]
    rows = self.encode_rows([self.call_text(q, a, tk) for (q, a, _), tk in zip(examples, toks)])
    tools = np.asarray([t for _, _, t in examples], np.int32)
    pos = np.argmax(rows["targets"] == (v0 + tools)[:, None], axis=1).astype(np.int32)
    rows.update(call_pos=pos, tool=tools)
    return rows

  def name_rows(self, examples: Sequence[tuple[str, list[str], int]]) -> dict[str, np.ndarray]:
    """Rows of the text format up to 'use the' (call_pos: the position that predicts the
    name's first word), for the base LM's own tool choice in words."""
    rows = self.encode_rows([f"q : {q} ? use the" for q, _, _ in examples], self.tokenizer)
    rows["call_pos"] = (rows["loss_mask"].sum(1) - 1).astype(np.int32)
    rows["tool"] = np.asarray([t for _, _, t in examples], np.int32)
    return rows


def prior_matrix(tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
  """(T, V) float32 pooling matrix: row t averages the rows of texts[t]'s tokens (a token
  that occurs twice counts twice), so prior = A @ E."""
  a = np.zeros((len(texts), tokenizer.vocab_size), np.float32)
  for t, text in enumerate(texts):
    ids = tokenizer.encode(text.encode())
    if len(ids) == 0:
      raise ConfigError(f"tool text {text!r} has no tokens")
    np.add.at(a[t], ids, 1.0 / len(ids))
  return a


# --- the method -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ToolTokensConfig(TransformerLMConfig):
  stage: str = "tools"        # pretrain: the LM on the text corpus | tools: learn tool rows
  init: str = "prior"         # prior | random: where the tool rows start
  reg_weight: float = 0.01    # weight of ||W - W_prior||^2 (0: plain fine-tuning of the rows)


@register_method("tool_tokens")
class ToolTokens(Method):
  """A frozen transformer_lm plus learnt tool-token rows (see the module docstring).

  vocab_size is the LM's own (no tool tokens); the task fixes the number of tools T.
  Parameters: stage 'pretrain' {'lm'}; stage 'tools' {'lm', 'tools': {input, output} (T, d),
  'prior': {input, output} (T, d)}.
  """
  Config = ToolTokensConfig

  def __init__(self, config: ToolTokensConfig, task: ToolTask | None = None):
    if config.stage not in STAGES:
      raise ConfigError(f"config.model.stage='{config.stage}' unknown; use one of {STAGES}")
    if config.init not in INITS:
      raise ConfigError(f"config.model.init='{config.init}' unknown; use one of {INITS}")
    if config.tie_embeddings:
      raise ConfigError("tool_tokens needs separate output rows: set "
                        "config.model.tie_embeddings=False")
    super().__init__(config)
    self.task = task or ToolTask()
    self.num_tools = self.task.num_tools if config.stage == "tools" else 0
    if config.vocab_size != self.task.base_vocab:
      raise ConfigError(f"config.model.vocab_size={config.vocab_size} but the task's word "
                        f"vocabulary has {self.task.base_vocab} tokens; set it to that")
    # The LM that runs: the base vocabulary plus the tool tokens (the same transformer_lm).
    self.lm = TransformerLM(dataclasses.replace(
        TransformerLMConfig(**{f.name: getattr(config, f.name)
                               for f in dataclasses.fields(TransformerLMConfig)}),
        vocab_size=config.vocab_size + self.num_tools))
    self.pool = jnp.asarray(prior_matrix(self.task.tokenizer, self.task.prior_texts()))

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    """The LM initialised at V0 + T tokens; the last T rows become the fresh tool rows."""
    full = self.lm.init(rng, batch)
    if not self.num_tools:
      return {"lm": full}
    v0 = self.config.vocab_size
    emb, head = full["embed"]["embedding"], full["lm_head"]["kernel"]
    lm = {**full, "embed": {"embedding": emb.replace_boxed(emb.value[:v0])},
          "lm_head": {**full["lm_head"], "kernel": head.replace_boxed(head.value[:, :v0])}}
    rows = lambda v: nn.LogicallyPartitioned(v, ("vocab", "embed"))
    tools = {"input": rows(emb.value[v0:]), "output": rows(head.value[:, v0:].T)}
    prior = self.prior(nn.meta.unbox(lm))
    return {"lm": lm, "tools": tools,
            "prior": {k: rows(v) for k, v in dataclasses.asdict(prior).items()}}

  def prior(self, lm_params: PyTree) -> Embeddings:
    """Pooled rows of each tool's name and description: input (T, d) = A @ E, output (T, d)
    = A @ U (A = `prior_matrix`)."""
    old = get_embeddings_traced(lm_params)
    return Embeddings(self.pool @ old.input, self.pool @ old.output)

  def adopt_params(self, fresh: PyTree, loaded: PyTree) -> PyTree:
    """From a pretrain run: the LM as trained, the prior from its rows, and the tool rows at
    the prior (init='prior') or at the model's own random init (init='random')."""
    if "lm" not in loaded:
      raise ConfigError("init_from must be a tool_tokens stage=pretrain run (its parameters "
                        "have no 'lm' subtree)")
    lm = jax.tree.map(lambda f, l: jnp.asarray(l, f.dtype), fresh["lm"], loaded["lm"])
    if not self.num_tools:
      return {"lm": lm}
    p = self.prior(lm)
    prior = {"input": p.input, "output": p.output}
    tools = dict(prior) if self.config.init == "prior" else fresh["tools"]
    return {"lm": lm, "tools": tools, "prior": prior}

  def full_params(self, params: PyTree) -> PyTree:
    """The transformer_lm parameters at V0 + T tokens (tool rows appended)."""
    if not self.num_tools:
      return params["lm"]
    tools = params["tools"]
    return extend_vocabulary(params["lm"], Embeddings(tools["input"], tools["output"]))

  def logits(self, params: PyTree, batch: Batch) -> jax.Array:
    """(B, L, V0 + T) logits of the LM with the tool tokens."""
    return self.lm.logits(self.full_params(params), batch)

  def regulariser(self, params: PyTree) -> jax.Array:
    """||W - W_prior||^2 over the tool rows, input and output (0 in stage pretrain)."""
    if not self.num_tools:
      return jnp.zeros(())
    return sum(jnp.sum(jnp.square(params["tools"][k] - params["prior"][k]))
               for k in ("input", "output"))

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    logits = self.logits(params, batch)
    ce, metrics = lm_loss(logits, batch)
    reg = self.regulariser(params)
    metrics["tool_reg"] = Average.of(reg, 1.0)
    if "call_pos" in batch:
      metrics.update(self.selection_metrics(logits, batch))
    return ce + self.config.reg_weight * reg, metrics

  def tool_logits(self, logits: jax.Array, call_pos: jax.Array) -> jax.Array:
    """(B, T) logits of the tool tokens at each row's call position."""
    at = jnp.take_along_axis(logits, call_pos[:, None, None], axis=1)[:, 0]
    return at[:, self.config.vocab_size:]

  def selection_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, Average]:
    """tool_acc: argmax over the tool tokens at the call position is the right tool;
    tool_top1: the right tool token is the argmax over the whole vocabulary there."""
    pos, tool = batch["call_pos"], batch["tool"]
    ok = jnp.argmax(self.tool_logits(logits, pos), -1) == tool
    at = jnp.take_along_axis(logits, pos[:, None, None], axis=1)[:, 0]
    top = jnp.argmax(at, -1) == self.config.vocab_size + tool
    n = jnp.asarray(tool.shape[0], jnp.float32)
    return {"tool_acc": Average.of(jnp.sum(ok), n), "tool_top1": Average.of(jnp.sum(top), n)}

  def flops_per_token(self, seq_len: int) -> float:
    return self.lm.flops_per_token(seq_len)


def get_embeddings_traced(params: Mapping[str, Any]) -> Embeddings:
  """get_embeddings for traced parameters (no numpy conversion)."""
  return Embeddings(params["embed"]["embedding"], params["lm_head"]["kernel"].T)


# --- the same prior as an initialiser of the transfer harness ----------------------------------

@register_initializer("tool_tokens")
def tool_tokens_init(old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer, *,
                     fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
  """Shared tokens keep their rows; a new token whose text (its bytes, stripped) has a
  description in aux['descriptions'] ({token text: name and description}) gets the mean of
  the old rows of that text's tokens under the old tokenizer (T0.encode); every other token
  keeps its fresh row."""
  descriptions = dict(aux.get("descriptions") or {})
  shared = shared_tokens(old_tokenizer, new_tokenizer)
  texts = {j: new_tokenizer.token_bytes(j).decode(errors="replace").strip()
           for j in range(new_tokenizer.vocab_size) if j not in shared}
  described = [j for j, text in texts.items() if text in descriptions]
  # The LM's own tokenizer on each description, pooled as the method's prior (A @ rows).
  pool = prior_matrix(old_tokenizer, [descriptions[texts[j]] for j in described])
  new_ids, old_ids = list(shared), [shared[j] for j in shared]

  def fill(old_m: np.ndarray, fresh_m: np.ndarray) -> np.ndarray:
    old_m = np.asarray(old_m)
    out = np.array(fresh_m, dtype=old_m.dtype, copy=True)
    out[new_ids] = old_m[old_ids]
    if described:
      out[described] = (pool.astype(np.float64) @ old_m.astype(np.float64)).astype(out.dtype)
    return out
  return Embeddings(fill(old.input, fresh.input),
                    None if old.output is None else fill(old.output, fresh.output))


# --- the trainer's iterators (config.data.name = 'method') -------------------------------------

class ToolIterator(StepIterator):
  """Batches of the pretrain corpus (fresh documents every step) or of the few-shot
  demonstrations (rows drawn with replacement from the fixed set)."""

  def __init__(self, task: ToolTask, stage: str, batch_size: int, seed: int, *, shots: int = 4,
               num_batches: int | None = None, eval_per_tool: int = 48):
    self.task, self.stage, self.batch_size, self.seed = task, stage, batch_size, seed
    self.num_batches, self.step = num_batches, 0
    self.fixed = None
    if stage == "tools":
      self.fixed = task.call_rows(task.few_shot(shots, seed))
    elif stage == "eval":
      self.fixed = task.call_rows(task.eval_queries(eval_per_tool))

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    rng = np.random.default_rng((self.seed, 3, self.step))
    self.step += 1
    if self.fixed is None:
      docs = [self.task.pretrain_document(rng) for _ in range(self.batch_size)]
      return self.task.encode_rows(docs, self.task.tokenizer)
    n = len(self.fixed["tool"])
    if self.stage == "eval":   # every held-out call in order (the last batch wraps around)
      idx = (self.step - 1) * self.batch_size + np.arange(self.batch_size)
      idx %= n
    else:
      idx = rng.integers(0, n, self.batch_size)
    return {k: v[idx] for k, v in self.fixed.items()}


def task_from_config(config) -> ToolTask:
  return ToolTask(seq_len=config.data.seq_len, name_noise=config.task.name_noise)


def iterator_fns(config):
  """(train_fn, eval_fn): the corpus (stage pretrain) or the few-shot demonstrations of
  config.task.shots per tool (stage tools; the seed draws them); eval: the held-out calls."""
  task = task_from_config(config)
  stage = config.model.stage

  def train_fn(batch_size, seed):
    return ToolIterator(task, stage, batch_size, seed, shots=config.task.shots)

  def eval_fn(batch_size, seed):
    if stage == "pretrain":
      return ToolIterator(task, "pretrain", batch_size, 10_000 + seed,
                          num_batches=config.train.eval_batches or 4)
    n = len(task.eval_queries())
    return ToolIterator(task, "eval", batch_size, 0, num_batches=-(-n // batch_size))
  return train_fn, eval_fn
