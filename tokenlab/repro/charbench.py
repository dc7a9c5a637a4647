"""Mini-reproduction of CharBench (Uzan & Pinter, arXiv 2508.02591) at toy scale, under the
protocol.

Task: locating a character in a word ("<word> find <c>=<i>", i = 0-based index of the first
occurrence), the CharBench task where the paper finds tokenization matters: accuracy falls
with the length of the token that holds the queried character.

Arms (second design, see HISTORY): the same transformer (d=64, 2 layers, 4 heads; seq 64,
batch 16, the same steps: budget = steps) trained on locate lines of train words with the loss
on the answer tokens only, once on characters (bytes) and once on BPE tokens (vocab 384, learned
on task lines of train words). Both are evaluated on held-out words (answer = the likeliest
candidate line under the model), and every example is annotated with the length of the BPE
token holding the queried character; the character model gets the same annotation as a
control (its own tokens are single characters, so a correlation there comes from the words
and positions, not from its tokens).

Trivial baseline (arm): the answer prior, i.e. always answering the most frequent training
answer of the locate task (index 0), scored on the same held-out examples.
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("Locating a character in a word is harder for a model on longer subword tokens: a "
         "character-level model beats a BPE model of matched size, and the BPE model's "
         "accuracy falls with the length of the token that holds the queried character.")

EXPERIMENT = "experiments/charbench.py"
ARMS = (("char", "bytes"), ("bpe384", "bpe"))
STEPS, SEQ, BATCH, N_EVAL = 1200, 64, 16, 600
PRIOR = "answer prior"
ACC, R_TOK = "locate accuracy", "locate: corr(correct, BPE token length)"
BASELINES = (PRIOR,)

CHECKS = (
    prerequisite("char_beats_prior", "the character model clearly beats always answering the "
                 "most frequent training answer (by > 0.05)", ("char", ACC), ">", (PRIOR, ACC),
                 by=0.05),
    prerequisite("bpe_beats_prior", "the BPE model clearly beats always answering the most "
                 "frequent training answer (by > 0.05)", ("bpe384", ACC), ">", (PRIOR, ACC),
                 by=0.05),
    claim("char_locates_better", "the character model locates more accurately than the BPE "
          "model on held-out words", ("char", ACC), ">", ("bpe384", ACC)),
    claim("token_length_effect", "the BPE model's correctness falls with the length of the "
          "token holding the character more than the character model's does on the same "
          "examples (correlation below the control's)", ("bpe384", R_TOK), "<",
          ("char", R_TOK)),
)
SEEDS = 3

HISTORY = """\
First design (before the protocol; one seed, `tokenlab repro charbench --seed 0`, 484 s): both
tasks (count and locate) mixed, loss on every token of the packed lines (seq 128, batch 16),
300 steps per arm. Locate accuracy: char 0.21, BPE 0.27; BPE r(correct, token length) -0.087,
accuracy 0.287 on 1-char tokens vs 0.260 on tokens of >= 3 chars; count accuracy char 0.645,
BPE 0.68. Verdict then: "partly" ((b) held). Under review (issue 12) it could not test the
claim: both models sat at answer-prior baselines (always answering locate = 0 gives 0.216;
always answering count = 1 gives 0.616 and its accuracy also falls with word length,
r = -0.175). Changed: locate only (the claim's task; counting was judged by nothing), loss on
the answer tokens only, 1200 steps of batch 16 x 64 tokens, the answer prior as an arm with
prerequisites that both models beat it, the token-length effect judged against the character
model as a control, 3 seeds, checks declared as data."""


def run_seed(ctx: Context) -> Trial:
  import jax
  from tokenlab.evals import charbench as cb
  from tokenlab.repro.baselines import answer_prior_accuracy
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  steps = ctx.steps(STEPS, 2)
  n_eval = 24 if ctx.quick else N_EVAL
  common = [f"--config.train.steps={steps}", f"--config.data.seq_len={SEQ}",
            f"--config.train.batch_size={BATCH}"]
  bpe = cb.task_tokenizer("bpe", 384, num_lines=500 if ctx.quick else 20000)
  rng = np.random.default_rng(ctx.seed + 1)
  test = cb.annotate(cb.make_examples(cb.words("test"), "locate", n_eval, rng), bpe)
  train_answers = cb.make_examples(cb.words("train"), "locate", 5000,
                                   np.random.default_rng(ctx.seed + 2))
  prior = answer_prior_accuracy([("locate", e.answer) for e in train_answers],
                                [("locate", e.answer) for e in test])
  rows: list[tuple[str, str, float | str]] = [(PRIOR, ACC, prior)]
  res: dict = {}
  arms = ARMS[:1] if ctx.quick else ARMS     # quick: the char arm only (smoke test)
  for arm, tok_kind in arms:
    spec = f"{EXPERIMENT}:size={size},tokenizer={tok_kind},vocab=384"
    tok = bpe if tok_kind == "bpe" else cb.task_tokenizer("bytes")

    def train_fn(batch_size, seed, tok=tok):
      return cb.TaskStream(tok, cb.words("train"), batch_size, SEQ, seed, tasks=("locate",),
                           answer_loss=True)
    no_eval = lambda batch_size, seed: iter(())   # held-out accuracy below is the eval
    ctx.train(spec, arm, common, train_iter_fn=train_fn, eval_iter_fn=no_eval)
    trained = load_trained(ctx.path(arm), next(train_fn(2, 0)))
    _, correct = trained.method.evaluate(trained.params, tok, test)
    a = cb.analysis(test, correct)
    res[arm] = a
    r = a["corr_token_len"]
    rows.append((arm, ACC, a["accuracy"]))
    # A constant correctness (all right or all wrong) has no correlation: 0, not nan.
    rows.append((arm, R_TOK, 0.0 if np.isnan(r) else r))
    for lo, hi, name in ((1, 1, "1"), (2, 2, "2"), (3, 99, ">=3")):
      acc, n = _bucket(a["by_token_len"], lo, hi)
      rows.append((arm, f"locate acc, BPE token len {name}", acc))
      rows.append((arm, f"examples, BPE token len {name}", float(n)))
    rows.append((arm, "locate: corr(correct, word length)", a["corr_word_len"]))
    del trained
    jax.clear_caches()
  return Trial(rows, {"res": res, "prior": prior})


def _bucket(by: dict, lo: int, hi: int) -> tuple[float, int]:
  hits = [(acc * n, n) for k, (acc, n) in by.items() if lo <= k <= hi]
  n = sum(h[1] for h in hits)
  return (sum(h[0] for h in hits) / n if n else float("nan")), n


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Locate accuracy by the length of the BPE token holding the character, per arm (mean and
  spread over seeds), with the answer prior."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  arms = list(trials[0].data["res"])
  for arm in arms:
    ks = sorted({k for t in trials for k in t.data["res"][arm]["by_token_len"]})
    means, stds = [], []
    for k in ks:
      v = [t.data["res"][arm]["by_token_len"][k][0] for t in trials
           if k in t.data["res"][arm]["by_token_len"]]
      means.append(np.mean(v))
      stds.append(np.std(v))
    ax.errorbar(ks, means, yerr=stds, fmt="o-", capsize=3, label=arm)
  ax.axhline(np.mean([t.data["prior"] for t in trials]), color="gray", ls=":",
             label="answer prior (always 0)")
  ax.set_xlabel("length of the BPE token holding the queried character")
  ax.set_ylabel("locate accuracy (held-out words)")
  ax.set_title(f"mean +- std over {len(trials)} seeds", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = ctx.out("charbench.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = (f"{ctx.steps(STEPS, 2)} steps per arm, batch {BATCH} x {SEQ} tokens of packed "
           "locate lines, loss on the answer tokens only (so the BPE arm sees more lines per "
           f"step: same steps and token budget, not the same lines); {N_EVAL} held-out-word "
           "examples per seed; answers chosen by likelihood over the candidate indices 0-11. "
           "Token length = bytes of the BPE token holding the queried character (first "
           "occurrence), in the line as the model sees it.")
  return [path], notes
