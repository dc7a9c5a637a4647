"""Mini-reproduction of CharBench (Uzan & Pinter, arXiv 2508.02591) at toy scale.

Arms: the same transformer (d=64, 2 layers, seq 128 tokens, batch 16, same steps) trained on
CharBench task lines ("<word> count <c>=<n>", "<word> find <c>=<i>") over train words, once on
characters (bytes) and once on BPE tokens (vocab 384, learned on task lines of train words).
Both are evaluated on held-out words (the answer = likeliest candidate), and each example is
annotated with the length of the BPE token that holds the queried character (the char arm
gets the same annotation, as a control: its own tokens are single characters).

Verdict rule (fixed before the runs):
  (a) the character model locates more accurately than the BPE model (held-out words);
  (b) the token-length effect: for the BPE model, locate correctness is negatively correlated
      with the length of the containing token (Pearson r < -0.05) and accuracy on characters
      in tokens of length >= 3 is below that on single-character tokens.
held = (a) and (b); partly = one; did not hold = neither. Counting rows (correlation with word
length and true count) are reported alongside, as the paper's counting analysis.
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import HELD, NOT_HELD, PARTLY, Context, Report

CLAIM = ("Locating a character in a word is harder for a model on longer subword tokens: a "
         "character-level model beats a BPE model of matched size, and the BPE model's "
         "accuracy falls with the length of the token that holds the queried character.")

EXPERIMENT = "experiments/charbench.py"


def run(ctx: Context) -> Report:
  import jax
  from tokenlab.config import load_config
  from tokenlab.evals import charbench as cb
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  steps = ctx.steps(300, 2)
  n_eval = 24 if ctx.quick else 400
  common = [f"--config.train.steps={steps}"] + (["--config.train.eval_batches=1"]
                                                if ctx.quick else [])
  bpe = cb.task_tokenizer("bpe", 384, num_lines=2000 if ctx.quick else 20000)
  rng = np.random.default_rng(ctx.seed + 1)
  test = cb.words("test")
  examples = {t: cb.annotate(cb.make_examples(test, t, n_eval, rng), bpe)
              for t in ("locate", "count")}
  rows: list[tuple[str, str, float | str]] = []
  res: dict = {}
  for arm, tok_kind in (("char", "bytes"), ("bpe384", "bpe")):
    spec = f"{EXPERIMENT}:size={size},tokenizer={tok_kind},vocab=384"
    config = load_config(spec, [f"--config.seed={ctx.seed}", *common])
    tok = bpe if tok_kind == "bpe" else cb.task_tokenizer("bytes")
    train_fn, eval_fn = _iterators(cb, config, tok)
    if ctx.quick:  # no trainer eval: one compile less per arm in the smoke test
      eval_fn = lambda batch_size, seed: iter(())
    ctx.train(spec, arm, common, train_iter_fn=train_fn, eval_iter_fn=eval_fn)
    trained = load_trained(ctx.path(arm), next(train_fn(2, 0)))
    for task, exs in examples.items():
      _, correct = trained.method.evaluate(trained.params, tok, exs)
      a = cb.analysis(exs, correct)
      res[(arm, task)] = a
      rows.append((arm, f"{task} accuracy", a["accuracy"]))
      if task == "locate":
        rows.append((arm, "locate: corr(correct, BPE token length)", a["corr_token_len"]))
        for lo, hi, name in ((1, 1, "1"), (2, 2, "2"), (3, 99, ">=3")):
          acc, n = _bucket(a["by_token_len"], lo, hi)
          rows.append((arm, f"locate acc, BPE token len {name} (n={n})", acc))
        rows.append((arm, "locate: corr(correct, word length)", a["corr_word_len"]))
      else:
        rows.append((arm, "count: corr(correct, word length)", a["corr_word_len"]))
        rows.append((arm, "count: corr(correct, true count)", a["corr_true_count"]))
        rows.append((arm, "count: corr(correct, BPE token length)", a["corr_token_len"]))
    del trained
    jax.clear_caches()

  char, tokd = res[("char", "locate")], res[("bpe384", "locate")]
  a_ok = char["accuracy"] > tokd["accuracy"]
  acc1, _ = _bucket(tokd["by_token_len"], 1, 1)
  acc3, _ = _bucket(tokd["by_token_len"], 3, 99)
  r = tokd["corr_token_len"]
  b_ok = bool(r < -0.05 and acc3 < acc1)
  verdict = HELD if a_ok and b_ok else PARTLY if a_ok or b_ok else NOT_HELD
  reason = (f"(a) locate accuracy char {char['accuracy']:.3f} vs BPE {tokd['accuracy']:.3f}; "
            f"(b) BPE: r(correct, token length) = {r:.3f}, accuracy {acc1:.3f} on 1-char "
            f"tokens vs {acc3:.3f} on tokens of >= 3 chars")
  figures = [_plot(ctx, res)]
  notes = (f"{steps} steps per arm, batch 16 x 128 tokens (so the BPE arm sees more task "
           f"lines per step); {n_eval} held-out-word examples per task; answers chosen by "
           "likelihood over the candidate set. Token length = bytes of the BPE token holding "
           "the queried character (first occurrence), in the line as the model sees it.")
  return Report(CLAIM, rows, verdict, reason, figures, notes)


def _iterators(cb, config, tok):
  seq = config.data.seq_len

  def train_fn(batch_size, seed):
    return cb.TaskStream(tok, cb.words("train"), batch_size, seq, seed)

  def eval_fn(batch_size, seed):
    return cb.TaskStream(tok, cb.words("test"), batch_size, seq, seed + 10_000,
                         num_batches=config.train.eval_batches or 10)
  return train_fn, eval_fn


def _bucket(by: dict, lo: int, hi: int) -> tuple[float, int]:
  hits = [(acc * n, n) for k, (acc, n) in by.items() if lo <= k <= hi]
  n = sum(h[1] for h in hits)
  return (sum(h[0] for h in hits) / n if n else float("nan")), n


def _plot(ctx: Context, res: dict) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for arm in ("char", "bpe384"):
    by = res[(arm, "locate")]["by_token_len"]
    ks = sorted(by)
    ax1.plot(ks, [by[k][0] for k in ks], "o-", label=arm)
    byw = res[(arm, "count")]["by_word_len"]
    kw = sorted(byw)
    ax2.plot(kw, [byw[k][0] for k in kw], "o-", label=arm)
  ax1.set_xlabel("length of the BPE token holding the queried character")
  ax1.set_ylabel("locate accuracy (held-out words)")
  ax2.set_xlabel("word length")
  ax2.set_ylabel("count accuracy (held-out words)")
  for ax in (ax1, ax2):
    ax.legend(fontsize=8)
  fig.tight_layout()
  path = ctx.path("charbench.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
