"""Mini-reproduction of "Toward a Theory of Tokenization in LLMs" (Rajaraman et al.).

Source: the markov source (k=4, p=q=0.8: entropy rate H = 0.722 bits/char, unigram entropy
U = 1 bit/char), data seed fixed; seeds vary model initialisation and batch order.

Arms (per seed):
  * trained: the same small transformer (d=64, 2 layers, seq 128 tokens, batch 16) trained for
    the same number of steps (300) on characters and on BPE tokens with vocabularies 16, 64, 256
    (same steps and tokens per batch, so tokenized arms see more characters: the paper's
    fixed-token-budget setting);
  * trivial baselines, fitted on the same training documents: uniform over {0, 1}, count
    unigram and count bigram over characters (`tokenlab.repro.baselines.NGram`);
  * reference (not a baseline): the count (k+1)-gram over characters, which knows k and is
    the achievable bits/char on this source;
  * reported, not judged: count unigram models over BPE and LZW tokens (the paper's (c));
    that a unigram over tokens beats one over characters is a training-free count, so it is
    a unit test (tests/test_tokenization_theory.py), not evidence here.
All bits/char on validation documents (transformers: the trainer's eval batches of the
validation split; counts: all validation documents).

Checks (declared below, before the run): prerequisites: every BPE transformer beats the count
bigram over characters by 0.05 bits/char, and the character transformer trained (it is within
0.05 bits/char of uniform or better, so a stall is not a divergence). Claims: (a) the
character transformer stalls: it is above the midpoint between H and the count unigram;
(b) tokens beat characters: the mean BPE transformer is below the character transformer by
0.01 bits/char; (c) larger vocabularies help: BPE-256 is below BPE-16.
"""

from __future__ import annotations


import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("On a k-th order Markov source (k > 1), a transformer on characters stalls near the "
         "unigram entropy while the same transformer on BPE tokens approaches the entropy rate "
         "as the vocabulary grows.")

EXPERIMENT = "experiments/tokenization_theory.py"
K, P, Q = 4, 0.8, 0.8
BPE_VOCABS = (16, 64, 256)
LZW_VOCABS = (16, 64, 256, 1024)
BPC = "bits/char"
MIDPOINT = "midpoint to H"          # metric of the unigram-counts arm: (H + its bits/char) / 2

BASELINES = ("uniform", "unigram chars (counts)", "bigram chars (counts)")

CHECKS = (
    *(prerequisite(f"bpe{v}_beats_bigram_counts",
                   f"the BPE-{v} transformer beats the count bigram over characters (the "
                   "strongest trivial predictor) by 0.05 bits/char",
                   (f"transformer bpe{v}", BPC), "<", ("bigram chars (counts)", BPC), by=0.05)
      for v in BPE_VOCABS),
    prerequisite("char_trained",
                 "the character transformer trained: no worse than uniform over {0,1} plus "
                 "0.05 bits/char (a stall, not a divergence)",
                 ("transformer char", BPC), "<", ("uniform", "bits/char + 0.05")),
    claim("chars_stall",
          "(a) the character transformer stalls near the unigram entropy: above the midpoint "
          "between the entropy rate H and the count unigram",
          ("transformer char", BPC), ">", ("unigram chars (counts)", MIDPOINT)),
    claim("tokens_beat_chars",
          "(b) tokens help: the BPE transformers (mean of 16/64/256) are below the character "
          "transformer by 0.01 bits/char",
          ("transformer bpe (mean)", BPC), "<", ("transformer char", BPC), by=0.01),
    claim("larger_vocab_better",
          "(c) approaching H as the vocabulary grows: the BPE-256 transformer is below BPE-16",
          ("transformer bpe256", BPC), "<", ("transformer bpe16", BPC)),
)

SEEDS = 3

HISTORY = """\
First design (before the protocol; one seed, seed 0, same arms and 600 steps): transformer
bits/char char 0.7313, BPE-16 / 64 / 256 0.7275 / 0.7295 / 0.7355; unigram over chars / BPE
16 / 64 / 256 1.000 / 0.911 / 0.833 / 0.800; LZW 16 / 64 / 256 / 1024 1.124 / 0.985 / 0.908 /
0.862 (H = 0.7219, U = 1). Verdict **partly**, by a rule that counted "BPE approaches H" as met
because every arm (the character one too) was near H, and counted the training-free unigram
computation. Issue 12: the central contrast (characters stall, tokens do not) did not appear.
This design keeps the source and model; it adds the trivial baselines as arms, three seeds,
and checks that can each fail (a stall measured against the count unigram, tokens
beating characters by a margin, BPE-256 beating BPE-16); the unigram-over-tokens result moved
to a unit test. To fit three seeds of four trained arms in the time budget on the shared
2-core host, each arm trains 300 steps (the experiment's `small` default) instead of 600: a
smaller step budget is expected to make a character stall more likely, not less (the
character arm was already at 0.738 train bits/char by step 195 of 600 in a first, aborted run
of this design at 600 steps)."""


_COUNTS: dict = {}   # the count models do not depend on the seed: computed once per process


def _count_rows(ctx: Context, data_over: list[str]) -> tuple[list, dict]:
  key = ctx.quick
  if key in _COUNTS:
    return _COUNTS[key]
  from tokenlab.config import load_config
  from tokenlab.data import get_tokenizer, markov
  from tokenlab.data.tokenizers.lzw import LZWTokenizer
  from tokenlab.methods.tokenization_theory import UnigramTokenModel
  from tokenlab.repro.baselines import NGram

  cfg = load_config(f"{EXPERIMENT}:size=small,tokenizer=bpe,vocab=16,k={K},p={P},q={Q}",
                    data_over)
  opts = cfg.data.options.to_dict()
  train = markov.documents("train", opts)[:500]
  val = markov.documents("validation", opts)
  H = markov.entropy_rate_bits(P, Q)
  rows, uni = [], {}
  n_val = val.size
  for name, order in (("unigram chars (counts)", 1), ("bigram chars (counts)", 2),
                      (f"{K + 1}-gram chars (counts, knows k: reference)", K + 1)):
    model = NGram(order, 2, alpha=0.5).fit(train)
    bpc = float(model.nll(val).sum() / n_val / np.log(2))
    rows.append((name, BPC, bpc))
    if order == 1:
      rows.append((name, MIDPOINT, (H + bpc) / 2))
  as_text = lambda a: [(d + ord("0")).tobytes() for d in a]
  train_docs, val_docs = as_text(train), as_text(val)
  for vocab in (BPE_VOCABS[:1] if ctx.quick else BPE_VOCABS):
    cfg.data.vocab_size = vocab
    tok = get_tokenizer(cfg.data)
    m = UnigramTokenModel(tok.vocab_size).fit(tok.encode_batch(train_docs))
    uni[f"bpe{vocab}"] = m.bits_per_char(tok.encode_batch(val_docs), tok.token_lengths())
    rows.append((f"unigram over bpe{vocab} tokens (counts)", BPC, uni[f"bpe{vocab}"]))
  for vocab in (LZW_VOCABS[:1] if ctx.quick else LZW_VOCABS):
    tok = LZWTokenizer.train(train_docs, vocab)
    m = UnigramTokenModel(tok.vocab_size).fit([tok.encode(d) for d in train_docs])
    uni[f"lzw{vocab}"] = m.bits_per_char([tok.encode(d) for d in val_docs],
                                         tok.token_lengths())
    rows.append((f"unigram over lzw{vocab} tokens (counts)", BPC, uni[f"lzw{vocab}"]))
  _COUNTS[key] = (rows, uni)
  return rows, uni


def run_seed(ctx: Context) -> Trial:
  from tokenlab.data import markov

  steps = ctx.steps(300, 2)
  size = "tiny" if ctx.quick else "small"
  data_over = []
  if ctx.quick:  # A small source, so the smoke test builds data and tokenizers in seconds.
    data_over = ["--config.data.options.num_train=50", "--config.data.options.length=256",
                 "--config.data.options.num_validation=10", "--config.train.eval_batches=2"]
  common = [f"--config.train.steps={steps}", *data_over]
  H, U = markov.entropy_rate_bits(P, Q), markov.unigram_entropy_bits(P, Q)
  rows = [("source", "entropy rate H (exact)", H), ("source", "unigram entropy U (exact)", U),
          ("uniform", BPC, 1.0), ("uniform", "bits/char + 0.05", 1.05)]

  # --quick trains one tiny arm (BPE-16) to smoke-test the pipeline; the full run has four.
  vocabs = BPE_VOCABS[:1] if ctx.quick else BPE_VOCABS
  arms = ([] if ctx.quick else [("char", "bytes", 256)]) + [(f"bpe{v}", "bpe", v)
                                                             for v in vocabs]
  bpc = {}
  for name, tok, vocab in arms:
    arg = f"size={size},tokenizer={tok},vocab={vocab},k={K},p={P},q={Q}"
    result = ctx.train(f"{EXPERIMENT}:{arg}", name, common)
    bpc[name] = float(result["eval/bits_per_byte"])   # a reused arm reports its last metrics
    rows.append((f"transformer {name}", BPC, bpc[name]))
  bpe = [bpc[f"bpe{v}"] for v in vocabs]
  rows.append(("transformer bpe (mean)", BPC, float(np.mean(bpe))))
  if "char" in bpc:
    rows.append(("transformer char", "gap to H", bpc["char"] - H))
  rows.append(("transformer bpe (mean)", "gap to H", float(np.mean(bpe)) - H))
  count_rows, uni = _count_rows(ctx, data_over)
  rows += count_rows
  return Trial(rows, {"bpc": bpc, "uni": uni, "H": H, "U": U, "steps": steps})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  d0 = trials[0].data
  H, U = d0["H"], d0["U"]
  bpe_names = [n for n in d0["bpc"] if n != "char"]
  vocab = lambda n: int(n.lstrip("bpelzw"))
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  xs = [vocab(n) for n in bpe_names]
  for i, t in enumerate(trials):
    b = t.data["bpc"]
    ax.plot(xs, [b[n] for n in bpe_names], "o-", color="C0", alpha=0.6,
            label="transformer on BPE (each seed)" if i == 0 else None)
    if "char" in b:
      ax.plot([2], [b["char"]], "s", color="C3", ms=7, alpha=0.6,
              label="transformer on chars (each seed)" if i == 0 else None)
  for prefix, style in (("bpe", "^--"), ("lzw", "v--")):
    names = [n for n in d0["uni"] if n.startswith(prefix)]
    ax.plot([vocab(n) for n in names], [d0["uni"][n] for n in names], style,
            label=f"unigram over {prefix.upper()} tokens (counts)")
  ax.axhline(H, color="k", lw=1, label=f"entropy rate H {H:.3f}")
  ax.axhline(U, color="gray", lw=1, ls=":", label=f"unigram entropy U {U:.3f} (= uniform)")
  ax.axhline((H + U) / 2, color="gray", lw=0.8, ls="--", label="stall threshold (midpoint)")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("vocabulary size (2 = characters)")
  ax.set_ylabel("bits per character (validation)")
  ax.set_title(f"markov k={K}, p=q={P}: {len(trials)} seed(s), {d0['steps']} steps per arm",
               fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.out("bits_per_char.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = (f"Same transformer (d=64, 2 layers, seq 128 tokens, batch 16) and {d0['steps']} steps "
           "per arm; tokenized arms see more characters per step (a fixed token budget, as in "
           "the paper). Budget: steps (equal for every trained arm); the count models need no "
           "steps. Count models: add-0.5 interpolated n-grams (characters) / add-0.5 unigrams "
           "(tokens) on the first 500 train documents, scored on all 200 validation documents; "
           "LZW dictionary from the LZ78 parse of the same documents, greedy longest match. The "
           "uniform, unigram and bigram baselines are all about 1 bit/char here (p = q, and "
           "x_n depends only on x_{n-4}).")
  return [path], notes
