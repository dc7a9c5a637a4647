"""Mini-reproduction of "Lexinvariant Language Models" (Huang et al., arXiv 2305.16349), under
the protocol.

Source (second design, see HISTORY): an order-1 Markov chain over 16 symbols
(tokenlab.methods.lexinvariant.MarkovSource: 2 successors per symbol, Zipf-skewed symbol
frequencies; exact entropy rate reported), sequences of 64 symbols. Within one sequence
every symbol is seen about 4 times, so its successors can be learned *in context* (in-context
bigram counts fall from about 2.4 to 0.9 nats along a sequence): this is what a lexinvariant
LM, which cannot know which symbol is which, has to do. Arms, the same transformer (d=64,
2 layers, 4 heads; batch 16 x 64) and the same steps (budget = steps):
the lexinvariant LM (fresh Gaussian embeddings per sequence) and the standard LM (learned
tied embeddings), both trained on plaintext. Measured on the same held-out sequences:

  * loss by position (8 buckets of 8 positions), plaintext, and the gap between the two;
  * a linear (ridge) probe from the residual streams (all layers, ciphered input: a fresh
    random substitution per sequence) to the *plaintext* id of the current token, fitted on
    probe sequences and scored on others, accuracy by position bucket.

Trivial baselines (arms): in-context count predictors fitted on each sequence's own prefix
(unigram, and bigram on the current symbol backed off to that unigram), which are
lexinvariant by construction and are what in-context statistics alone reach; the majority
symbol for the probe; the untrained lexinvariant network (same architecture at init) as the
probe's control. The cipher invariance of the lexinvariant LM holds by construction for any
parameters: it is a unit test (tests/test_lexinvariant.py), reported here only as rows.
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("A lexinvariant LM (random Gaussian embeddings per sequence) approaches a standard "
         "LM's loss as the context grows and deciphers in context: a probe recovers the "
         "plaintext token better at later positions.")

EXPERIMENT = "experiments/lexinvariant.py"
BUCKETS = 8
VOCAB, ORDER, BRANCHING, SEQ, BATCH = 16, 1, 2, 64, 16
STEPS = 1500
SOURCE = [f"--config.source.vocab={VOCAB}", f"--config.source.order={ORDER}",
          f"--config.source.branching={BRANCHING}", f"--config.model.vocab_size={VOCAB}",
          f"--config.data.seq_len={SEQ}", f"--config.train.batch_size={BATCH}"]

UNI, BI = "in-context unigram (counts)", "in-context bigram (counts)"
MAJ, UNTRAINED = "majority symbol", "untrained lexinvariant"
LOSS, GAIN = "loss, plain", "probe gain (last - first bucket)"
BASELINES = (UNI, BI, MAJ, UNTRAINED)

CHECKS = (
    prerequisite("lex_beats_unigram_counts", "the lexinvariant LM predicts better than "
                 "in-context unigram counts", ("lexinvariant", LOSS), "<", (UNI, LOSS)),
    prerequisite("lex_beats_bigram_counts", "the lexinvariant LM predicts better than "
                 "in-context bigram counts (it learned to use the context, not only "
                 "frequencies)", ("lexinvariant", LOSS), "<", (BI, LOSS)),
    prerequisite("standard_beats_bigram_counts", "the standard LM predicts better than "
                 "in-context bigram counts (it learned the source)", ("standard", LOSS), "<",
                 (BI, LOSS)),
    claim("gap_shrinks", "the loss gap lexinvariant - standard in the last position bucket is "
          "below half the gap in the first bucket", ("lexinvariant - standard",
                                                     "gap ratio, last / first bucket"),
          "<", 0.5),
    claim("probe_beats_majority", "a linear probe recovers the plaintext id from the "
          "lexinvariant LM's residuals (ciphered input) in the last bucket better than the "
          "majority symbol (by > 0.1)", ("lexinvariant", "probe acc, last bucket"), ">",
          (MAJ, "probe acc, last bucket"), by=0.1),
    claim("probe_rises", "the probe's accuracy rises with position more for the trained "
          "lexinvariant LM than for the untrained network (by > 0.1)", ("lexinvariant", GAIN),
          ">", (UNTRAINED, GAIN), by=0.1),
)
SEEDS = 3

HISTORY = """\
First design (before the protocol; one seed, `tokenlab repro lexinvariant --seed 0`, 175 s):
an order-2 Markov source over 32 symbols (4 successors per context), sequences of 256, 400
steps of batch 16 per arm. Loss: lexinvariant 3.413 nats (ln 32 = 3.466), standard 1.895,
entropy rate 1.083; gap lexinvariant - standard 1.507 (first bucket) -> 1.542 (last);
cipher: lexinvariant +0.008, standard +2.649; probe 0.126 -> 0.145 vs majority 0.184.
Verdict then: "partly", resting on (b) cipher invariance. Under review (issue 12): that
invariance holds by construction for any lexinvariant network, trained or not (it is a unit
test now), and the model itself (3.41 nats) was worse than an in-context unigram counter
(about 3.06 in the last bucket): it had learned nothing, and with an order-2 source over 1024
contexts a 256-symbol sequence holds too few repeats for in-context statistics to help
(in-context bigram counts 3.53). Changed: an order-1 source over 16 symbols (2 successors) with
sequences of 64, so in-context statistics can be learned within a sequence; 1500 steps of
batch 16 per arm (what fits the machine's budget); in-context counters as baseline arms with prerequisites that both LMs beat them; the
probe judged against the majority symbol and an untrained network; 3 seeds; checks as data."""


def _features(method, params, source, key: str, seed: int, n_batches: int, lexinvariant: bool):
  """Per-position plaintext / cipher NLL, residual features (cipher) and plaintext ids."""
  import jax
  import jax.numpy as jnp
  from tokenlab.methods.lexinvariant import SourceIterator

  @jax.jit
  def f(params, inputs, targets, rng):
    table = method.embeddings(rng, inputs.shape[0])
    logits, res = method.apply(params, inputs, table)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return nll, jnp.concatenate(res, axis=-1)
  out = {"plain": [], "cipher": []}
  feats, plain_ids = [], []
  it = SourceIterator(source, BATCH, SEQ, seed, key, cipher=True, num_batches=n_batches,
                      with_plain=True)
  for i, b in enumerate(it):
    rng = jax.random.key(1000 + i)   # the same embedding draw for plain and cipher
    nll_p, _ = f(params, b["plain_inputs"], b["plain_targets"], rng)
    nll_c, feat = f(params, b["inputs"], b["targets"], rng)
    out["plain"].append(np.asarray(nll_p))
    out["cipher"].append(np.asarray(nll_c))
    feats.append(np.asarray(feat))
    plain_ids.append(b["plain_inputs"])
  return ({k: np.concatenate(v) for k, v in out.items()}, np.concatenate(feats),
          np.concatenate(plain_ids))


def _bucket(a: np.ndarray) -> np.ndarray:
  return a.reshape(a.shape[0], BUCKETS, -1).mean(axis=(0, 2))


def run_seed(ctx: Context) -> Trial:
  import jax
  from tokenlab.config import load_config
  from tokenlab.methods.lexinvariant import SourceIterator, iterator_fns, source_from_config
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  steps = ctx.steps(STEPS, 2)
  common = [f"--config.train.steps={steps}", *SOURCE]
  n_batches = 1 if ctx.quick else 8
  params, methods = {}, {}
  arms = (("lexinvariant", 1),) if ctx.quick else (("lexinvariant", 1), ("standard", 0))
  config = source = None
  for arm, lx in arms:
    spec = f"{EXPERIMENT}:size={size},lexinvariant={lx}"
    config = load_config(spec, [f"--config.seed={ctx.seed}", *common])
    train_fn, _ = iterator_fns(config)
    no_eval = lambda batch_size, seed: iter(())   # the held-out measures below replace it
    ctx.train(spec, arm, common, train_iter_fn=train_fn, eval_iter_fn=no_eval)
    source = source_from_config(config)
    example = next(SourceIterator(source, 2, config.data.seq_len, 0))
    run = load_trained(ctx.path(arm), example)
    params[arm], methods[arm] = run.params, run.method
    if lx:   # the untrained control: the same architecture at its initialisation
      methods[UNTRAINED] = run.method
      params[UNTRAINED] = jax.jit(run.method.init)(jax.random.key(ctx.seed + 99), example)

  H = source.entropy_rate()
  majority = float(source.unigram().max())
  rows: list[tuple[str, str, float | str]] = [
      ("source", "entropy rate (nats/symbol, exact)", H),
      (MAJ, "probe acc, last bucket", majority)]
  curves, probe = {}, {}
  edges = [(i * SEQ // BUCKETS, (i + 1) * SEQ // BUCKETS - 1) for i in range(BUCKETS)]
  for arm in params:
    test_seed, probe_seed = ctx.seed + 17, ctx.seed + 29
    nll, f_te, y_te = _features(methods[arm], params[arm], source, "validation", test_seed,
                                n_batches, True)
    _, f_tr, y_tr = _features(methods[arm], params[arm], source, "probe", probe_seed,
                              n_batches, True)
    probe[arm] = _probe_accuracy(f_tr, y_tr, f_te, y_te, source.vocab)
    curves[arm] = _bucket(nll["plain"])
    rows += [(arm, LOSS, float(nll["plain"].mean())),
             (arm, "loss, cipher (reported; invariance is a unit test)",
              float(nll["cipher"].mean()))]
    rows += [(arm, f"loss, plain, positions {a}-{b}", float(v))
             for (a, b), v in zip(edges, curves[arm])]
    rows += [(arm, "probe acc, first bucket", float(probe[arm][0])),
             (arm, "probe acc, last bucket", float(probe[arm][-1])),
             (arm, GAIN, float(probe[arm][-1] - probe[arm][0]))]

  batches = list(SourceIterator(source, BATCH, SEQ, ctx.seed + 17, "validation",
                                num_batches=n_batches, with_plain=True))
  plain = np.concatenate([b["plain_inputs"] for b in batches])
  targets = np.concatenate([b["plain_targets"] for b in batches])
  for name, nll in _in_context_counts(plain, targets, source.vocab).items():
    curves[name] = _bucket(nll)
    rows.append((name, LOSS, float(nll.mean())))
    rows.append((name, "loss, plain, first bucket", float(curves[name][0])))
    rows.append((name, "loss, plain, last bucket", float(curves[name][-1])))
  if "standard" in curves:
    gap = curves["lexinvariant"] - curves["standard"]
    rows += [("lexinvariant - standard", "loss gap, first bucket", float(gap[0])),
             ("lexinvariant - standard", "loss gap, last bucket", float(gap[-1])),
             ("lexinvariant - standard", "gap ratio, last / first bucket",
              float(gap[-1] / gap[0]))]
  return Trial(rows, {"curves": curves, "probe": probe, "H": H, "majority": majority})


def _in_context_counts(inputs: np.ndarray, targets: np.ndarray, vocab: int,
                       alpha: float = 0.5, beta: float = 1.0) -> dict[str, np.ndarray]:
  """Per-position NLL of in-context count predictors: unigram (add-alpha over the prefix)
  and bigram on the current symbol backed off to that unigram (weight beta)."""
  N, L = inputs.shape
  uni_nll, bi_nll = np.zeros((N, L)), np.zeros((N, L))
  for n in range(N):
    uni = np.zeros(vocab)
    bi = np.zeros((vocab, vocab))
    prev = None
    for t in range(L):
      x, y = inputs[n, t], targets[n, t]
      uni[x] += 1
      if prev is not None:
        bi[prev, x] += 1
      p_uni = (uni + alpha) / (uni.sum() + alpha * vocab)
      p_bi = (bi[x] + beta * p_uni) / (bi[x].sum() + beta)
      uni_nll[n, t], bi_nll[n, t] = -np.log(p_uni[y]), -np.log(p_bi[y])
      prev = x
  return {UNI: uni_nll, BI: bi_nll}


def _probe_accuracy(f_tr, y_tr, f_te, y_te, vocab: int, lam: float = 1.0) -> np.ndarray:
  """Ridge-regression probe to one-hot ids; accuracy per position bucket on the test set."""
  X = f_tr.reshape(-1, f_tr.shape[-1]).astype(np.float64)
  mu, sd = X.mean(0), X.std(0) + 1e-6
  X = np.concatenate([(X - mu) / sd, np.ones((len(X), 1))], axis=1)
  Y = np.eye(vocab)[y_tr.reshape(-1)]
  W = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ Y)
  Xt = f_te.reshape(-1, f_te.shape[-1]).astype(np.float64)
  Xt = np.concatenate([(Xt - mu) / sd, np.ones((len(Xt), 1))], axis=1)
  correct = (np.argmax(Xt @ W, axis=1) == y_te.reshape(-1)).reshape(y_te.shape)
  return correct.reshape(correct.shape[0], BUCKETS, -1).mean(axis=(0, 2))


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Loss by position (mean over seeds) with the counters and the entropy rate; probe
  accuracy by position."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  x = (np.arange(BUCKETS) + 0.5) * SEQ / BUCKETS
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for name in trials[0].data["curves"]:
    v = np.array([t.data["curves"][name] for t in trials])
    style = ":" if "counts" in name else "o-"
    ax1.errorbar(x, v.mean(0), yerr=v.std(0), fmt=style, capsize=2, label=name)
  H = trials[0].data["H"]
  ax1.axhline(H, color="k", lw=1, label=f"entropy rate {H:.3f}")
  ax1.set_xlabel("position")
  ax1.set_ylabel("loss (nats), plaintext")
  ax1.legend(fontsize=7)
  for arm in trials[0].data["probe"]:
    v = np.array([t.data["probe"][arm] for t in trials])
    ax2.errorbar(x, v.mean(0), yerr=v.std(0), fmt="o-", capsize=2,
                 label=f"probe on {arm} (ciphered input)")
  maj = trials[0].data["majority"]
  ax2.axhline(maj, color="gray", ls=":", label=f"majority {maj:.3f}")
  ax2.set_xlabel("position")
  ax2.set_ylabel("plaintext-id probe accuracy")
  ax2.legend(fontsize=7)
  fig.suptitle(f"mean +- std over {len(trials)} seeds", fontsize=9)
  fig.tight_layout()
  path = ctx.out("lexinvariant.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = (f"{ctx.steps(STEPS, 2)} steps per arm, batch {BATCH} x {SEQ} symbols; held-out: "
           f"{8 * BATCH} sequences, one embedding draw per sequence shared by the plain and "
           "ciphered pass. Probe: ridge regression (lambda=1) on the concatenated residual "
           "streams of all layers to the one-hot plaintext id of the current input token, "
           "fitted on other sequences. In-context counters: add-0.5 unigram over the prefix; "
           "bigram on the current symbol with weight-1 back-off to that unigram.")
  return [path], notes
