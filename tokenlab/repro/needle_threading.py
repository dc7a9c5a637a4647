"""Mini-reproduction of Needle Threading (Roberts, Han & Albanie, arXiv 2411.05000), under
the reproduction protocol (tokenlab/repro/protocol.py).

The paper's findings, in miniature: accuracy falls as the context grows (the effective context
is shorter than the one the model supports), following a thread gets harder with every hop,
and models are largely thread-safe (following two threads at once costs little per thread).
Added here (issue 21): a model with windowed attention, which makes long contexts cheap,
cannot retrieve a needle that lies beyond its window, measured on the same haystacks.

Setup (tokenlab.evals.needle; experiments/needle_threading.py, size=small): haystacks of
`k:v,` pairs, keys one character of 0-9a-zA-Z, values keys of the same haystack; training
rows hold one haystack of 4..31 pairs (contexts up to 128 bytes) and then queries until the
row is full: single needles (40%), threads of 1-3 hops (40%), two threads at once (20%),
loss on the answers only; fresh haystacks every step. Two trained arms, the same transformer
(2 layers, d=64, 2 heads, bytes), optimizer, batch and steps (budget = steps):
  dense      causal attention over the whole context;
  windowed   tokenlab's windowed-attention kernel, each token sees the WINDOW tokens before it.
Evaluation (the same haystacks for every arm and seed, drawn from a seed of their own):
context lengths 32, 64, 128 bytes x needle depth 0, .25, .5, .75, 1 (single needle) and
x hops 1-3 (threading, two-thread multi-threading), 32 haystacks per cell; exact match by
greedy decoding, computed as "every answer token is the teacher-forced argmax".

Trivial baselines (arms, scored on the same haystacks):
  uniform            each lookup guesses a value of the haystack uniformly (exact, 1/n per
                     lookup);
  answer prior       each lookup answers the haystack's most frequent value (training answers
                     are uniform over keys, so the prior within the haystack is the stronger);
  most recent pair   each lookup answers the value of the pair nearest the query;
  untrained          the dense network at initialisation (the seed's init).

Checks are declared below, before any run.
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("Retrieval from key-value haystacks degrades as the context grows and as a thread "
         "gets longer, while following two threads at once costs little per thread; a "
         "windowed-attention model fails on needles beyond its window.")

EXPERIMENT = "experiments/needle_threading.py"
WINDOW = 24                 # tokens (= bytes) a windowed arm's token sees before it
STEPS = 1000
DENSE, WINDOWED = "dense", f"windowed (W={WINDOW})"
UNIFORM, PRIOR, RECENT, UNTRAINED = "uniform", "answer prior", "most recent pair", "untrained"
BASELINES = (UNIFORM, PRIOR, RECENT, UNTRAINED)
LENGTHS = (32, 64, 128)
SEEDS = 3

SINGLE = "single needle exact match"
BEYOND, WITHIN = "single, needle beyond the window", "single, needle within the window"
SHORT, LONG = f"all tasks, context {LENGTHS[0]}", f"all tasks, context {LENGTHS[-1]}"
HOP1, HOP3 = "threading, 1 hop", "threading, 3 hops"
ONE_THREAD, TWO_THREADS = "per thread, 1 thread (hops 1-3)", "per thread, 2 threads (hops 1-3)"

CHECKS = (
    prerequisite("dense_beats_uniform", "the dense model retrieves single needles far better "
                 "than guessing a haystack value", (DENSE, SINGLE), ">", (UNIFORM, SINGLE),
                 by=0.3),
    prerequisite("dense_beats_prior", "... than answering the haystack's most frequent value",
                 (DENSE, SINGLE), ">", (PRIOR, SINGLE), by=0.3),
    prerequisite("dense_beats_recent", "... than answering the most recent pair's value",
                 (DENSE, SINGLE), ">", (RECENT, SINGLE), by=0.3),
    prerequisite("dense_beats_untrained", "... than the untrained network",
                 (DENSE, SINGLE), ">", (UNTRAINED, SINGLE), by=0.3),
    prerequisite("not_saturated", "the task is not saturated: the dense model misses some "
                 "3-hop threads", (DENSE, HOP3), "<", 0.98),
    claim("window_fails_beyond", "the windowed model retrieves needles beyond its window far "
          "less often than the dense model does (same haystacks)", (WINDOWED, BEYOND), "<",
          (DENSE, BEYOND), by=0.3),
    claim("window_works_within", "the windowed model does retrieve needles within its window "
          "(its failure is the needle's distance, not the model)", (WINDOWED, WITHIN), ">",
          (WINDOWED, BEYOND), by=0.3),
    claim("longer_context_worse", "the dense model's exact match is lower at the longest "
          "context than at the shortest (all tasks)", (DENSE, LONG), "<", (DENSE, SHORT)),
    claim("more_hops_worse", "the dense model follows 3-hop threads less often than 1-hop "
          "threads", (DENSE, HOP3), "<", (DENSE, HOP1)),
    claim("thread_safe", "thread-safe: following two threads at once, each thread is right "
          "nearly as often (within 0.1) as a thread followed alone", (DENSE, TWO_THREADS), ">",
          (DENSE, ONE_THREAD), by=-0.1),
)

HISTORY = """\
Design probes before the checks were written (a dense arm, seed 0, not part of any result):
keys of 2 hex characters over 256-byte contexts with one query per row learned nothing in 400
steps (exact match 0.00-0.06 per cell); keys of one character over 128-byte contexts with
several queries per row, 4 heads, 400 steps: single-needle exact match 0.00-0.25 per cell
(haystacks of 6-30 pairs: about chance), train loss 2.05 nats per answer token. The design
run here: one-character keys, several queries per row, 2 heads, 1000 steps (chosen for the
time budget, not from a result)."""


def _grid(quick: bool):
  from tokenlab.evals.needle import Grid
  if quick:
    return Grid(lengths=(32, 64), depths=(0.0, 1.0), hops=(1, 2), per_cell=2)
  return Grid(lengths=LENGTHS, per_cell=32)


def _score(cells: dict, ok: dict, window: int) -> dict[str, float]:
  """The judged metrics of one arm from per-example answer-token correctness `ok`
  ({cell: [bool arrays]}) over the grid's haystacks `cells` ({cell: [Haystack]})."""
  from tokenlab.evals.needle import parts_correct
  em = {key: np.array([o.all() for o in ok[key]], bool) for key in cells}
  single = [(ex, e) for key in cells if key[0] == "single"
            for ex, e in zip(cells[key], em[key])]
  out = {SINGLE: float(np.mean([e for _, e in single]))}
  beyond = [e for ex, e in single if ex.distance > window]
  within = [e for ex, e in single if ex.distance <= window]
  out[BEYOND] = float(np.mean(beyond)) if beyond else float("nan")
  out[WITHIN] = float(np.mean(within)) if within else float("nan")
  for L in sorted({key[1] for key in cells}):
    out[f"all tasks, context {L}"] = float(np.mean(np.concatenate(
        [em[key] for key in cells if key[1] == L])))
  for h in sorted({key[2] for key in cells if key[0] == "threading"}):
    out[f"threading, {h} hop" + ("s" if h > 1 else "")] = float(np.mean(np.concatenate(
        [em[key] for key in cells if key[0] == "threading" and key[2] == h])))
    out[f"multi_threading (2), {h} hop" + ("s" if h > 1 else "")] = float(np.mean(
        np.concatenate([em[key] for key in cells
                        if key[0] == "multi_threading" and key[2] == h] or [[np.nan]])))
  one = [bool(e) for key in cells if key[0] == "threading" for e in em[key]]
  two = [p for key in cells if key[0] == "multi_threading"
         for ex, o in zip(cells[key], ok[key]) for p in parts_correct(ex, o)]
  hops = sorted({key[2] for key in cells if key[0] != "single"})
  out[ONE_THREAD.replace("1-3", f"{hops[0]}-{hops[-1]}")] = float(np.mean(one))
  out[TWO_THREADS.replace("1-3", f"{hops[0]}-{hops[-1]}")] = float(np.mean(two))
  return out


def _baseline_ok(cells: dict, rule) -> dict:
  """Per-example correctness of a lookup rule, in the shape of the networks' `ok`."""
  return {key: [np.array([rule(ex)]) for ex in exs] for key, exs in cells.items()}


def _uniform_scores(cells: dict, window: int) -> dict[str, float]:
  """The uniform guess's metrics, exact: the mean probability of guessing right."""
  from tokenlab.evals.needle import uniform_accuracy
  p = {key: np.array([uniform_accuracy(ex) for ex in exs]) for key, exs in cells.items()}
  single = [(ex, q) for key in cells if key[0] == "single" for ex, q in zip(cells[key], p[key])]
  out = {SINGLE: float(np.mean([q for _, q in single])),
         BEYOND: float(np.mean([q for ex, q in single if ex.distance > window])),
         WITHIN: float(np.mean([q for ex, q in single if ex.distance <= window]))}
  for key in cells:
    if key[0] == "threading" and key[2] in (1, 3):
      name = HOP1 if key[2] == 1 else HOP3
      out[name] = float(np.mean(np.concatenate([p[k] for k in cells if k[0] == "threading"
                                                and k[2] == key[2]])))
  return out


def run_seed(ctx: Context) -> Trial:
  """Trains the dense and the windowed arm, scores them and the baselines on the grid."""
  import contextlib
  from tokenlab.repro import compile_cache
  # Seeds after the first load the arms' compiled programs instead of compiling again.
  with contextlib.nullcontext() if ctx.quick else compile_cache(ctx.out("jax_cache")):
    return _run_seed(ctx)


def _run_seed(ctx: Context) -> Trial:
  import jax
  from tokenlab.config import load_config
  from tokenlab.data.tokenizers import BytesTokenizer
  from tokenlab.evals.needle import answer_prior_baseline, grid_examples, recent_pair_baseline
  from tokenlab.evals.needle import grid_token_correct
  from tokenlab.methods.needle_threading import iterator_fns
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  grid = _grid(ctx.quick)
  cells = grid_examples(grid)
  length = max(grid.lengths)
  tok = BytesTokenizer()
  batch = 16 if ctx.quick else 64
  correct = lambda fn: grid_token_correct(fn, tok, cells, length, batch)

  steps = ["--config.train.steps=3"] if ctx.quick else [f"--config.train.steps={STEPS}"]
  arms = ((DENSE, 0),) if ctx.quick else ((DENSE, 0), (WINDOWED, WINDOW))
  res, oks = {}, {}
  for arm, window in arms:
    spec = f"{EXPERIMENT}:size={size},window={window}"
    config = load_config(spec, [f"--config.seed={ctx.seed}", *steps])
    train_fn, _ = iterator_fns(config)
    no_eval = lambda batch_size, seed: iter(())   # the exact-match grid below is the eval
    folder = "dense" if window == 0 else f"windowed_{window}"
    ctx.train(spec, folder, steps, train_iter_fn=train_fn, eval_iter_fn=no_eval)
    run = load_trained(ctx.path(folder), {"inputs": np.zeros((batch, length), np.int32)})
    # One compiled function per architecture, parameters as an argument: the untrained
    # network below reuses the dense arm's compile.
    jfn = jax.jit(lambda p, t, m=run.method: m.logits(p, {"inputs": t}))
    oks[arm] = correct(lambda t, p=run.params, f=jfn: np.asarray(f(p, t)))
    res[arm] = _score(cells, oks[arm], WINDOW)
    if window == 0 and not ctx.quick:   # quick: no untrained arm (one compile less)
      init = jax.jit(run.method.init)(jax.random.key(ctx.seed),
                                      {"inputs": np.zeros((1, length), np.int32)})
      oks[UNTRAINED] = correct(lambda t, p=init, f=jfn: np.asarray(f(p, t)))
      res[UNTRAINED] = _score(cells, oks[UNTRAINED], WINDOW)
  res[PRIOR] = _score(cells, _baseline_ok(cells, answer_prior_baseline), WINDOW)
  res[RECENT] = _score(cells, _baseline_ok(cells, recent_pair_baseline), WINDOW)
  res[UNIFORM] = _uniform_scores(cells, WINDOW)
  rows = [(arm, metric, value) for arm, scores in res.items()
          for metric, value in scores.items()]
  heat = {arm: {key: np.array([o.all() for o in ok[key]]) for key in cells}
          for arm, ok in oks.items() if arm != UNTRAINED}
  return Trial(rows, {"heat": heat, "res": res})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Heat maps (exact match, mean over seeds): context length x needle depth and x hops,
  dense and windowed."""
  from tokenlab.evals.needle import heatmaps
  first = trials[0].data["heat"]
  mean = {arm: {key: np.mean([t.data["heat"][arm][key].mean() for t in trials], keepdims=True)
                for key in cells} for arm, cells in first.items()}
  path = heatmaps(mean, ctx.out("needle_threading.png"),
                  title=f"needle threading: exact match, mean over {len(trials)} seed(s)",
                  window={WINDOWED: WINDOW}, dpi=30 if ctx.quick else 90)
  notes = (f"Trained arms: {ctx.steps(STEPS, 3)} steps each, batch 16 rows of 128 bytes, "
           "the same optimizer and initialisation seed; evaluation haystacks are the same "
           "for every arm and seed. 'beyond the window' = the needle pair starts more than "
           f"{WINDOW} bytes before the end of the query (a two-layer windowed model could "
           f"still relay information up to {2 * WINDOW} bytes through its two layers). "
           "Per-thread exact match with two threads counts each thread of the answer "
           "separately; with one thread it is the thread's exact match.")
  return [path], notes
