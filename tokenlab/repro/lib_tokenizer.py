"""Mini-reproduction of LiB, the Less-is-Better tokenizer (Yang 2024, "Rethinking
Tokenization: Crafting Better Tokenizers for Large Language Models").

The paper's claim: the LiB model learns a vocabulary (subwords, words, multi-word
expressions) that reduces both the number of tokens and the number of types, and the LiB
tokenizer outperforms BPE. In miniature, at equal vocabulary (1024 = 256 bytes + 768 units)
on `pysrc` (Python source; 4.6 MB train split), every tokenizer judged on the first 200 KB of
the validation split (whole documents; no tokenizer saw them):

Tokenizer arms (per seed):
  * `lib`: LiB learned by reading 300 articles of 100 lines (tokenlab/data/tokenizers/lib.py),
    learner seed = the seed (seed 0 is the pipeline's cached `lib:1024`);
  * `bpe`: the pipeline's byte-level BPE of the same vocabulary on the same train split;
  * trivial baselines: `bytes` (the uniform tokenizer) and `counts`, a frequency-only
    vocabulary of the same size on the same data (the 256 bytes + the characters and
    space-separated chunks that save the most bytes by count, greedy longest match;
    `tokenlab.methods.qtok.count_vocabulary`).
  Metrics: bytes per token, LiB's score log2|lexicon| / bytes per token (lower is better; at
  equal vocabulary it orders as bytes per token does), and the types used (distinct ids).

Downstream arms (per seed; the seed sets the LM's init and data order): tokenlab's
transformer LM (2 layers, d_model 128, seq_len 128 tokens, batch 16, 300 steps: equal tokens
per step and equal steps for both tokenizers) over `lib:1024` (learner seed 0) and over
`bpe:1024`, trained through the real trainer; metric: held-out bits per byte (the trainer's
eval over 20 validation batches). Trivial baselines on the same eval batches: the untrained
LM over LiB tokens, and per tokenizer a count n-gram (`baselines.NGram`, order 2 or 3 chosen
on held-out training tokens) fitted on as many training tokens as the LM saw.

Checks (declared below, before the run). Prerequisites: LiB beats bytes by 0.5 bytes per
token; LiB and BPE each beat the count vocabulary on bytes per token; each LM beats its
tokenizer's count n-gram, and the LiB LM beats its untrained network by 0.5 bits per byte.
Claims: LiB (a) has a lower LiB score than BPE (fewer tokens at equal vocabulary), (b) reads
the held-out text with fewer types, and (c) gives the downstream LM fewer bits per byte.
"""

from __future__ import annotations

import math
import time

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("At equal vocabulary, LiB's learned vocabulary reads held-out text in fewer tokens "
         "(a lower LiB score) and with fewer types than BPE, and a language model over LiB "
         "tokens reaches fewer bits per byte than the same model over BPE tokens.")

EXPERIMENT = "experiments/lib_tokenizer.py"
BPT, SCORE, TYPES = "bytes/token", "LiB score (bits/byte)", "types used"
BPB = "eval bits/byte"
TOKENIZERS = ("bytes", "counts", "bpe", "lib")
BASELINES = ("bytes", "counts", "untrained lib LM", "lib n-gram (counts)",
             "bpe n-gram (counts)")

CHECKS = (
    prerequisite("lib_beats_bytes", "LiB compresses the held-out text by at least 0.5 bytes "
                 "per token more than bytes", ("lib", BPT), ">", ("bytes", BPT), by=0.5),
    prerequisite("lib_beats_counts", "LiB compresses better than the frequency-only "
                 "vocabulary of the same size", ("lib", BPT), ">", ("counts", BPT)),
    prerequisite("bpe_beats_counts", "BPE compresses better than the frequency-only "
                 "vocabulary of the same size", ("bpe", BPT), ">", ("counts", BPT)),
    prerequisite("lib_lm_beats_ngram", "the LM over LiB tokens beats the count n-gram over "
                 "the same tokens", ("lib LM", BPB), "<", ("lib n-gram (counts)", BPB)),
    prerequisite("bpe_lm_beats_ngram", "the LM over BPE tokens beats the count n-gram over "
                 "the same tokens", ("bpe LM", BPB), "<", ("bpe n-gram (counts)", BPB)),
    prerequisite("lib_lm_beats_untrained", "the LM over LiB tokens beats its untrained "
                 "network by 0.5 bits per byte", ("lib LM", BPB), "<",
                 ("untrained lib LM", BPB), by=0.5),
    claim("lower_lib_score", "(a) LiB's score log2|lexicon| / bytes per token is below BPE's",
          ("lib", SCORE), "<", ("bpe", SCORE)),
    claim("fewer_types", "(b) LiB reads the held-out text with fewer distinct token types "
          "than BPE", ("lib", TYPES), "<", ("bpe", TYPES)),
    claim("lower_lm_bits", "(c) the LM over LiB tokens reaches fewer held-out bits per byte "
          "than the same LM over BPE tokens", ("lib LM", BPB), "<", ("bpe LM", BPB)),
)

SEEDS = 3
_CACHE: dict = {}


def _size(ctx: Context) -> str:
  return "tiny" if ctx.quick else "repro"


def _data_cfg(config, kind: str):
  from tokenlab.data import config as data_config
  vocab = 256 if kind == "bytes" else config.lib.vocab_size
  cfg = dict(config.data.to_dict(), tokenizer=kind, vocab_size=vocab)
  return data_config.resolve(cfg)


def _held_out(config) -> list[bytes]:
  """The first `eval_bytes` of the validation split, whole documents (the last one cut)."""
  from tokenlab.data import sources
  cfg = _data_cfg(config, "bytes")
  src, doc = sources.data_source(cfg, "validation"), sources.document_fn(cfg)
  out, total = [], 0
  for i in range(len(src)):
    d = bytes(doc(src[i]))
    out.append(d[:config.lib.eval_bytes - total])
    total += len(out[-1])
    if total >= config.lib.eval_bytes:
      break
  return out


def _shared(ctx: Context, config) -> dict:
  """What every seed shares (cached in the process): train documents, held-out text, the
  pipeline's BPE and LiB (seed 0), the count vocabulary."""
  key = (_size(ctx), config.lib.vocab_size)
  if key not in _CACHE:
    from tokenlab.data import get_tokenizer
    from tokenlab.data.tokenizers import BytesTokenizer, train_documents
    from tokenlab.methods import qtok
    t = time.perf_counter()
    docs = train_documents(_data_cfg(config, "bytes"))
    # The count vocabulary reads as much text as LiB can (whole train split; quick: 200 KB).
    count_docs = docs if not ctx.quick else _prefix(docs, 200_000)
    shared = {"docs": docs, "held": _held_out(config),
              "bytes": BytesTokenizer(),
              "counts": qtok.count_vocabulary(count_docs, config.lib.vocab_size),
              "bpe": get_tokenizer(_data_cfg(config, "bpe"))}
    t_lib = time.perf_counter()
    shared["lib0"] = get_tokenizer(_data_cfg(config, "lib"))
    shared["lib0_seconds"] = time.perf_counter() - t_lib
    print(f"[lib_tokenizer] shared tokenizers ready in {time.perf_counter() - t:.1f}s",
          flush=True)
    _CACHE[key] = shared
  return _CACHE[key]


def _prefix(docs: list[bytes], budget: int) -> list[bytes]:
  out, total = [], 0
  for d in docs:
    if total >= budget:
      break
    out.append(d[:budget - total])
    total += len(out[-1])
  return out


def _ngram_bits_per_byte(tok, docs: list[bytes], budget_tokens: int, orders: list[int],
                         batches: list[dict]) -> tuple[float, int]:
  """(bits per byte on `batches`, order) of a count n-gram over `tok`'s tokens, fitted on the
  first `budget_tokens` tokens of `docs` (the LM's token budget); the order is the best of
  `orders` on the last 10% of those tokens when fitted on the first 90%."""
  from tokenlab.repro.baselines import NGram
  seqs, total = [], 0
  for d in docs:
    ids = np.asarray(tok.encode(d))[:budget_tokens - total]
    seqs.append(ids)
    total += len(ids)
    if total >= budget_tokens:
      break
  flat = np.concatenate(seqs)
  cut = int(0.9 * len(flat))
  fit_part, held = flat[:cut], flat[cut:cut + 20_000]
  order = orders[0]
  if len(orders) > 1:
    held_nll = {o: float(NGram(o, tok.vocab_size).fit([fit_part]).nll([held]).mean())
                for o in orders}
    order = min(held_nll, key=held_nll.get)
  model = NGram(order, tok.vocab_size).fit(seqs)
  nats = byte_count = 0.0
  for b in batches:
    mask = np.asarray(b["loss_mask"], np.float64)
    nll = model.nll_of(np.asarray(b["inputs"]), np.asarray(b["targets"]))
    nats += float((nll * mask).sum())
    byte_count += float((np.asarray(b["target_bytes"]) * mask).sum())
  return nats / math.log(2.0) / max(byte_count, 1.0), order


def _eval_batches(config) -> list[dict]:
  """The trainer's own eval batches (validation, stored order, the first eval_batches)."""
  from tokenlab.data import make_iterator
  it = make_iterator(config.data, split="validation", batch_size=config.train.batch_size,
                     seed=config.seed, shuffle=False, num_epochs=1)
  return [b for _, b in zip(range(config.train.eval_batches), it)]


def run_seed(ctx: Context) -> Trial:
  from tokenlab.config import load_config
  from tokenlab.data.tokenizers.lib import LiBTokenizer
  from tokenlab.methods.lib_tokenizer import reading_stats
  size = _size(ctx)
  config = load_config(f"{EXPERIMENT}:size={size}", [f"--config.seed={ctx.seed}"])
  shared = _shared(ctx, config)
  vocab = config.lib.vocab_size
  rows, data = [], {}

  # 1. The tokenizers: LiB learned with the seed's learner (seed 0: the pipeline's).
  t = time.perf_counter()
  if ctx.seed == 0:
    lib, lib_seconds = shared["lib0"], shared["lib0_seconds"]
  else:
    lib = LiBTokenizer.train(shared["docs"], vocab, seed=ctx.seed)
    lib_seconds = time.perf_counter() - t
  toks = {"bytes": shared["bytes"], "counts": shared["counts"], "bpe": shared["bpe"],
          "lib": lib}
  for name, tok in toks.items():
    s = reading_stats(tok, shared["held"])
    data[name] = s
    rows += [(name, BPT, s["bytes_per_token"]), (name, SCORE, s["lib_score"]),
             (name, TYPES, s["types"]), (name, "vocabulary size", tok.vocab_size)]
  if getattr(lib, "learner", None) is not None:   # learned here, not loaded from the cache
    rows.append(("lib", "learning seconds (pure Python)", lib_seconds))
  rows.append(("lib", "mean unit bytes", float(np.mean([len(u) for u in lib.units]))))
  rows.append(("held-out text", "bytes", data["bytes"]["bytes"]))
  log = getattr(lib, "learner", None) and lib.learner.log
  print(f"[lib_tokenizer] seed {ctx.seed}: LiB learned in {lib_seconds:.1f}s; bytes/token "
        + ", ".join(f"{n} {data[n]['bytes_per_token']:.3f}" for n in toks), flush=True)

  # 2. The downstream LMs through the real trainer, same budget in steps and tokens. The
  # smoke test (--quick) trains the LiB arm only, evaluated and saved once.
  steps = config.train.steps
  common = [f"--config.train.steps={steps}"]
  if ctx.quick:
    common += [f"--config.train.eval_every={steps}", f"--config.checkpoint.every_steps={steps}"]
  exp = f"{EXPERIMENT}:size={size},tokenizer="
  kinds = ("lib",) if ctx.quick else ("lib", "bpe")
  lm = {kind: ctx.train(exp + kind, f"{kind}_lm", common) for kind in kinds}
  for kind in kinds:
    rows.append((f"{kind} LM", BPB, float(lm[kind].get("eval/bits_per_byte", math.nan))))
    rows.append((f"{kind} LM", "eval loss (nats/token)", float(lm[kind].get("eval/loss",
                                                                             math.nan))))

  # 3. The LM's trivial baselines on the same eval batches.
  budget = steps * config.train.batch_size * config.data.seq_len
  orders = [int(o) for o in config.lib.ngram_orders.split(",")][:1 if ctx.quick else None]
  for kind in ("lib", "bpe"):
    kcfg = load_config(exp + kind, [f"--config.seed={ctx.seed}"])
    batches = _eval_batches(kcfg)     # stored order: the same batches for every seed
    tok = shared["lib0"] if kind == "lib" else shared["bpe"]
    if f"ngram {kind}" not in shared:  # counts over the same data: the same for every seed
      shared[f"ngram {kind}"] = _ngram_bits_per_byte(tok, shared["docs"], budget, orders,
                                                     batches)
    bits, order = shared[f"ngram {kind}"]
    rows += [(f"{kind} n-gram (counts)", BPB, bits),
             (f"{kind} n-gram (counts)", "order", order)]
    if kind == "lib" and not ctx.quick:   # one more compile: left out of the smoke test
      from tokenlab.repro.baselines import untrained_metrics
      rows.append(("untrained lib LM", BPB, float(untrained_metrics(
          kcfg, batches, ctx.seed)["eval/bits_per_byte"])))
  rows.append(("LM", "training tokens (both tokenizers)", budget))

  if ctx.seed == 0 and not ctx.quick:
    _tokenizer_report(ctx, toks, shared["held"])
  return Trial(rows, {"stats": data, "log": log or [],
                      "units": [u.decode("utf-8", "replace") for u in lib.units[:60]]})


def _tokenizer_report(ctx: Context, toks: dict, held: list[bytes]) -> None:
  """`tokenlab tokenizer-report`'s tables and PNG of the four tokenizers on the held-out
  Python source (one 'language': pysrc)."""
  from tokenlab.evals import tokenizer_report as tr
  corpus = {"pysrc": [d.decode("utf-8", "replace") for d in held]}
  reports = [tr.report(tok, corpus, name) for name, tok in toks.items()]
  with open(ctx.out("tokenizer_report_seed0.md"), "w") as f:
    f.write("# `tokenizer_report` of every tokenizer arm, seed 0, held-out pysrc\n\n"
            + tr.markdown(reports))
  tr.plot(reports, ctx.out("tokenizer_report_seed0.png"))


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  seed_rows = [{(a, m): v for a, m, v in t.rows} for t in trials]
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  for ax, metric in ((axes[0], BPT), (axes[1], SCORE)):
    for i, name in enumerate(TOKENIZERS):
      vals = [r[(name, metric)] for r in seed_rows]
      ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.6)
      ax.scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
    ax.set_xticks(range(len(TOKENIZERS)), TOKENIZERS)
    ax.set_title(f"{metric} on held-out pysrc", fontsize=9)
  arms = [a for a in ("lib LM", "bpe LM", "lib n-gram (counts)", "bpe n-gram (counts)",
                      "untrained lib LM") if (a, BPB) in seed_rows[0]]
  for i, arm in enumerate(arms):
    vals = [r[(arm, BPB)] for r in seed_rows]
    axes[2].bar(i, np.mean(vals), color=f"C{i}", alpha=0.6)
    axes[2].scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
  axes[2].set_xticks(range(len(arms)), [a.replace(" (counts)", "\n(counts)") for a in arms],
                     fontsize=7)
  axes[2].set_title(f"{BPB} (LM at {len(trials)} seed(s))", fontsize=9)
  fig.tight_layout()
  path = ctx.out("lib_tokenizer.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  figures = [path]
  logs = [t.data["log"] for t in trials if t.data["log"]]
  if logs:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    for log in logs:
      arr = np.asarray(log, float)
      ax[0].plot(arr[:, 2])
      ax[1].plot(arr[:, 0] / arr[:, 1])
    ax[0].set(xlabel="article", ylabel="lexicon size (units)", title="LiB lexicon while reading")
    ax[1].set(xlabel="article", ylabel="bytes per chunk", title="the article's reading")
    fig.tight_layout()
    figures.append(ctx.out("lib_learning.png"))
    fig.savefig(figures[-1], dpi=110)
    plt.close(fig)
  notes = ("The LMs of every seed read `lib:1024` (learner seed 0, the pipeline's cached "
           "tokenizer); the tokenizer rows of seed s use the learner seed s. LiB's 60 "
           "best-ranked units (seed " + str(ctx.seed) + "): "
           + " ".join(repr(u) for u in trials[0].data["units"]))
  if not ctx.quick:
    notes += (" The tokenizer report of the four tokenizers on the held-out text is in "
              "tokenizer_report_seed0.md / .png.")
  return figures, notes
