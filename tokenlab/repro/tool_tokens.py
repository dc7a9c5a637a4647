"""Mini-reproduction of re-initialised tool tokens (arXiv 2506.14248), under the
protocol (tokenlab/repro/protocol.py).

The paper's claim: tool tokens whose embeddings start from the pooled word embeddings of the
tool's name/description and are regularised toward that prior are selected more accurately
by a frozen LM than randomly initialised tool tokens (ToolkenGPT), most of all with few
demonstrations.

Per seed (tokenlab/methods/tool_tokens.py, experiments/tool_tokens.py:size=small):
1. The LM: transformer_lm (d 64, 2 layers) trained 300 steps (batch 32) on the word corpus
   of `ToolTask`: queries followed by 'use the NAME ARGS' (a wrong tool's name in 25% of the
   documents) and 'the NAME DESCRIPTION' sentences. Six tools, three query templates each.
2. Frozen; six tool tokens appended. For shots k in (1, 4, 16) demonstrations per tool (drawn
   by the seed; 'q : QUERY ? use the <TOOL> ARGS'), three arms learn only the tool rows,
   40 steps of batch 16 at lr 1e-2 each (budget = steps, the same for every arm):
     prior+reg    rows start at the prior, loss + 0.01 ||W - W_prior||^2 (the method)
     prior        rows start at the prior, no regulariser
     random       rows from the model's own initialiser, no regulariser (ToolkenGPT)
3. Metric: tool-selection accuracy on 288 held-out queries (48 per tool, 16 per template;
   the same for every seed): argmax over the six tool tokens at the call position.

Trivial baselines (arms): uniform over tools (1/6), the majority tool of the demonstrations
(ties: the first), keyword (the tool whose name + description words overlap the query most;
ties split evenly), a word-count model on the same demonstrations (naive Bayes over the
query's words, add-one), and the untrained tool rows (random rows, 0 steps). Also measured:
the prior rows before any step (0 shots), and the frozen LM's own choice in words (at 'use
the', the argmax over the tools' first name words): the knowledge the prior can transfer.

Checks (declared before any run): prerequisites: the LM names the right tool in words far
more often than the keyword baseline (there is knowledge to transfer); random rows with 16
shots learn (far above uniform); random rows with 1 shot are not saturated. Claims: with 1
and with 4 shots the method beats random rows; with 1 shot it beats the unregularised prior
and the word-count model on the same demonstrations; with 16 shots it is not worse than
random rows.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import tempfile

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite

CLAIM = ("Tool tokens initialised from the pooled embeddings of the tool's name and "
         "description and regularised toward them are selected more accurately by a frozen "
         "LM than randomly initialised tool tokens, most of all with few demonstrations.")

EXPERIMENT = "experiments/tool_tokens.py"
SHOTS = (1, 4, 16)
REG = 0.01
ARMS = (("prior+reg", "prior", REG), ("prior", "prior", 0.0), ("random", "random", 0.0))
METHOD, NOREG, RANDOM = (a[0] for a in ARMS)
UNIFORM, MAJORITY, KEYWORD, COUNTS, UNTRAINED = (
    "uniform", "majority tool", "keyword (name + description)",
    "word counts (naive Bayes, same demos)", "untrained rows (random, 0 steps)")
BASELINES = (UNIFORM, MAJORITY, KEYWORD, COUNTS, UNTRAINED)
PRIOR0, WORDS = "prior rows, 0 steps", "frozen LM, tool named in words"
ACC = "tool accuracy"
SEEDS = 3


def acc(k: int) -> str:
  return f"{ACC}, {k}-shot"


CHECKS = (
    prerequisite("lm_knows_tools", "the frozen LM names the right tool in words far more "
                 "often than the keyword baseline (knowledge the prior can transfer)",
                 (WORDS, ACC), ">=", (KEYWORD, ACC), by=0.2),
    prerequisite("random_rows_learn", "random tool rows learn from 16 demonstrations per tool "
                 "(far above the same rows untrained)", (RANDOM, acc(16)), ">=",
                 (UNTRAINED, ACC), by=0.3),
    prerequisite("above_uniform", "16-shot random rows far above uniform over tools",
                 (RANDOM, acc(16)), ">=", (UNIFORM, ACC), by=0.3),
    prerequisite("above_majority", "16-shot random rows far above the majority tool",
                 (RANDOM, acc(16)), ">=", (MAJORITY, acc(16)), by=0.3),
    prerequisite("not_saturated", "with 1 demonstration per tool random rows are not "
                 "already perfect", (RANDOM, acc(1)), "<=", 0.95),
    claim("prior_beats_random_1", "1-shot: the method beats random rows by 0.10",
          (METHOD, acc(1)), ">=", (RANDOM, acc(1)), by=0.10),
    claim("prior_beats_random_4", "4-shot: the method beats random rows by 0.02",
          (METHOD, acc(4)), ">=", (RANDOM, acc(4)), by=0.02),
    claim("reg_helps_1", "1-shot: the regulariser helps (beats the unregularised prior)",
          (METHOD, acc(1)), ">", (NOREG, acc(1))),
    claim("beats_counts_1", "1-shot: the method beats the word-count model fitted on the "
          "same demonstrations by 0.05", (METHOD, acc(1)), ">=", (COUNTS, acc(1)), by=0.05),
    claim("not_worse_16", "16-shot: the method is not worse than random rows",
          (METHOD, acc(16)), ">=", (RANDOM, acc(16))),
)


# --- the trivial baselines (numpy) ------------------------------------------------------------

def keyword_accuracy(task, queries) -> float:
  """Expected accuracy of picking the tool whose name + description words overlap the
  query's words most (ties broken uniformly at random: 1/|ties| when the right tool ties)."""
  vocab = [set(t.split()) for t in task.prior_texts()]
  total = 0.0
  for q, _, tool in queries:
    words = set(q.split())
    scores = np.array([len(words & v) for v in vocab])
    best = np.flatnonzero(scores == scores.max())
    total += (tool in best) / len(best)
  return total / len(queries)


def counts_accuracy(demos, queries, num_tools: int) -> float:
  """Naive Bayes over query words (add-one) fitted on the demonstrations; expected accuracy
  with ties split evenly."""
  counts = collections.defaultdict(lambda: np.zeros(num_tools))
  per_tool = np.zeros(num_tools)
  prior = np.zeros(num_tools)
  for q, _, t in demos:
    prior[t] += 1
    for w in q.split():
      counts[w][t] += 1
      per_tool[t] += 1
  vocab = len(counts) + 1
  total = 0.0
  for q, _, tool in queries:
    score = np.log(np.maximum(prior, 1e-12) / prior.sum())
    for w in q.split():
      score = score + np.log((counts[w] + 1) / (per_tool + vocab)) if w in counts else score
    best = np.flatnonzero(np.isclose(score, score.max()))
    total += (tool in best) / len(best)
  return total / len(queries)


def majority_accuracy(demos, queries) -> float:
  from tokenlab.repro.baselines import majority
  top = majority(t for _, _, t in demos)
  return float(np.mean([t == top for _, _, t in queries]))


# --- evaluation of tool rows with the frozen LM (one compile per shape, shared by arms) -------

_JIT: dict = {}


def _method(stage: str, size: str):
  from tokenlab.config import load_config
  from tokenlab import registry
  key = (stage, size)
  if key not in _JIT:
    import jax
    config = load_config(f"{EXPERIMENT}:size={size},stage={stage}")
    method = registry.build_method(config.model)
    _JIT[key] = (method, jax.jit(method.logits))
  return _JIT[key]


def selection_accuracy(params, rows, size: str) -> float:
  """Argmax over the tool tokens at the call position == the right tool (mean)."""
  method, logits_fn = _method("tools", size)
  logits = np.asarray(logits_fn(params, {"inputs": rows["inputs"]}))
  at = logits[np.arange(len(rows["tool"])), rows["call_pos"]][:, method.config.vocab_size:]
  return float(np.mean(np.argmax(at, -1) == rows["tool"]))


def words_accuracy(lm_params, task, rows, size: str) -> float:
  """The frozen LM's choice in words: at 'use the', the argmax over the tools' first name
  words. (Computed with the tool-stage forward: appended rows leave the word logits as they
  are, and the programme is the one `selection_accuracy` compiled.)"""
  method, logits_fn = _method("tools", size)
  zeros = np.zeros((task.num_tools, method.config.d_model), np.float32)
  rows_p = {"input": zeros, "output": zeros}
  logits = np.asarray(logits_fn({"lm": lm_params, "tools": rows_p, "prior": rows_p},
                                {"inputs": rows["inputs"]}))
  tok = task.tokenizer
  first = np.array([tok.ids[t.name.split()[0]] for t in task.tools])
  at = logits[np.arange(len(rows["tool"])), rows["call_pos"]][:, first]
  return float(np.mean(np.argmax(at, -1) == rows["tool"]))


def _tree_equal(a, b) -> bool:
  import jax
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def run_seed(ctx: Context) -> Trial:
  from tokenlab.methods.tool_tokens import ToolTask
  from tokenlab.train.init_from import load_params
  size = "tiny" if ctx.quick else "small"
  no_eval = {"eval_iter_fn": lambda batch_size, seed: iter(())}   # evaluated here instead
  task = ToolTask()
  queries = task.eval_queries()
  rows = task.call_rows(queries)
  # The frozen LM (every seed its own).
  # The persistent compile cache (outside the workdir): the arms of every seed compile the
  # same programs. Under --quick (the tests) the session's own cache is left as it is.
  cache = (contextlib.nullcontext() if ctx.quick else
           compile_cache(os.path.join(tempfile.gettempdir(), "tokenlab-jax-cache-tool_tokens")))
  with cache:
    ctx.train(f"{EXPERIMENT}:size={size},stage=pretrain", "lm", **no_eval)
    lm = load_params(ctx.path("lm"))["lm"]
    method, _ = _method("tools", size)
    import jax
    prior = method.prior(jax.tree.map(np.asarray, lm))
    prior = {"input": np.asarray(prior.input), "output": np.asarray(prior.output)}
    out = [(WORDS, ACC, words_accuracy(lm, task, task.name_rows(queries), size)),
           (UNIFORM, ACC, 1.0 / task.num_tools),
           (KEYWORD, ACC, keyword_accuracy(task, queries)),
           (PRIOR0, ACC, selection_accuracy({"lm": lm, "tools": prior, "prior": prior}, rows,
                                            size))]
    # The untrained rows: drawn by the model's own initialiser (tokenlab.nn.layers
    # default_init, as the LM's embedding and lm_head) at this seed.
    from tokenlab.nn.layers import default_init
    shape = prior["input"].shape
    fresh_tools = {k: np.asarray(default_init(jax.random.key(ctx.seed + i), shape))
                   for i, k in enumerate(("input", "output"))}
    out.append((UNTRAINED, ACC, selection_accuracy(
        {"lm": lm, "tools": fresh_tools, "prior": prior}, rows, size)))
    shots_list = (1,) if ctx.quick else SHOTS
    arms = ARMS[:1] if ctx.quick else ARMS
    curves = {}
    for k in shots_list:
      demos = task.few_shot(k, ctx.seed)   # what the trainer's iterator draws for this seed
      out.append((MAJORITY, acc(k), majority_accuracy(demos, queries)))
      out.append((COUNTS, acc(k), counts_accuracy(demos, queries, task.num_tools)))
      for name, init, reg in arms:
        arm = f"{name}_{k}shot".replace("+", "_")
        ctx.train(f"{EXPERIMENT}:size={size},stage=tools,init={init},reg={reg},shots={k},"
                  f"init_from={os.path.abspath(ctx.path('lm'))}", arm, **no_eval)
        params = load_params(ctx.path(arm))
        value = selection_accuracy(params, rows, size)
        out.append((name, acc(k), value))
        curves[(name, k)] = value
        # The method's invariant, checked on the real trainer's output: the LM is untouched.
        out.append((name, f"LM arrays changed, {k}-shot",
                    0 if _tree_equal(params["lm"], lm) else 1))
        if init == "prior":
          out.append((name, f"tool rows moved from the prior (L2), {k}-shot", float(
              np.linalg.norm(params["tools"]["output"] - prior["output"]))))
        if ctx.quick:   # the numbers are read: no per-arm plots (the runner plots every arm)
          shutil.rmtree(ctx.path(arm))
    if ctx.quick:
      shutil.rmtree(ctx.path("lm"))
  return Trial(out, {"curves": curves, "shots": shots_list})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Accuracy vs demonstrations per tool, mean +- std over seeds, with the baselines."""
  notes = ("Every tool arm: 40 steps of batch 16 drawn with replacement from the "
           "demonstrations, AdamW lr 1e-2 (no weight decay), warm-up then cosine, only the "
           "tool rows trainable (config.train.freeze); the same for every arm. 'LM arrays "
           "changed' compares every frozen LM array of each trained arm with the pretrained "
           "LM's, bit for bit (0 = identical).")
  if ctx.quick:   # a smoke test: the numbers are checked, no figure is drawn
    return [], notes
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  shots = trials[0].data["shots"]
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, _, _ in ARMS:
    vals = np.array([[t.data["curves"].get((name, k), np.nan) for k in shots] for t in trials])
    if np.all(np.isnan(vals)):
      continue
    ax.errorbar(shots, np.nanmean(vals, 0), yerr=np.nanstd(vals, 0), marker="o", label=name,
                capsize=3)
  seed_rows = [dict(((a, m), v) for a, m, v in t.rows) for t in trials]
  for arm, style in ((KEYWORD, "k:"), (UNIFORM, "k--"), (PRIOR0, "g-."), (WORDS, "m:")):
    ax.axhline(np.mean([r[(arm, ACC)] for r in seed_rows]), color=style[0],
               ls=style[1:], lw=1, label=arm)
  counts = np.array([[r.get((COUNTS, acc(k)), np.nan) for k in shots] for r in seed_rows])
  ax.plot(shots, np.nanmean(counts, 0), "k^-", lw=0.8, label=COUNTS)
  ax.set_xscale("log", base=2)
  ax.set_xticks(shots)
  ax.set_xticklabels([str(k) for k in shots])
  ax.set_xlabel("demonstrations per tool")
  ax.set_ylabel("tool-selection accuracy (288 held-out queries)")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7, loc="lower right")
  ax.set_title(f"tool tokens on a frozen LM, mean +- std over {len(trials)} seeds", fontsize=9)
  fig.tight_layout()
  path = ctx.out("tool_tokens.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return [path], notes
