"""Mini-reproduction of Qtok's finding (Chelombitko et al., arXiv 2410.12989).

Qtok finds that the tokenizers of public LLMs spread their vocabularies unevenly across
languages and scripts, to the detriment of languages other than English. In miniature, with
the cause controlled: BPE with the same vocabulary (1024) trained on the same number of bytes
(36,000) of the `multilingual` train split, once from a skewed mix (90% English, 10% split
over nine other languages) and once from a balanced mix (10% each), over ten languages: four
in Latin script (en, de, fr, es) and six in others (ru Cyrillic, el Greek, ar Arabic, ja
Kana/Han, ko Hangul, hi Devanagari). Seeds draw different strings for the mixes (3 seeds =
3 corpus samples). Every tokenizer is measured by `tokenlab.evals.tokenizer_report` on the
held-out (validation) strings of each language: no string it is judged on was in a mix.

Arms (per seed):
  * trained tokenizers: `bpe skewed`, `bpe balanced`;
  * trivial baselines: `bytes` (the uniform tokenizer: 1 byte per token), and on each mix a
    count vocabulary of the same size (`counts skewed` / `counts balanced`: bytes + the
    characters and words that save the most bytes by count, greedy longest match;
    `tokenlab.methods.qtok.count_vocabulary`); no network is trained, so there is no
    untrained-network arm;
  * `skewed/balanced`: the ratios the claim is about (`qtok.script_gap`).

Checks (declared below, before the run). Prerequisites: each BPE beats the count vocabulary of
its own mix on bytes per token over all ten languages, the balanced BPE beats bytes by 0.5
bytes per token, and the task is not saturated: the balanced BPE still needs more than 1.2
tokens per word on the non-Latin languages. Claims: on the non-Latin languages the skewed BPE
(a) compresses at least 10% worse (mean ratio of bytes per token < 0.9), (b) needs at least
10% more tokens per word (fertility ratio > 1.1), (c) compresses worse on every one of the
six, and (d) gives those scripts at least 10 points less of its vocabulary than the
balanced BPE (Qtok's distribution across scripts).
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("A BPE tokenizer trained on an English-dominated mix under-serves languages in other "
         "scripts: on them it compresses worse and needs more tokens per word than a BPE of "
         "the same size trained on a balanced mix, and gives their scripts a smaller share of "
         "its vocabulary.")

EXPERIMENT = "experiments/qtok.py"
BPT, FERT, SHARE = "bytes/token (all langs)", "fertility (non-Latin)", "non-Latin vocab share"
BPT_NL = "bytes/token (non-Latin)"
GAP = "skewed/balanced"
BASELINES = ("bytes", "counts skewed", "counts balanced")
ARMS = ("bytes", "counts skewed", "counts balanced", "bpe skewed", "bpe balanced")

CHECKS = (
    prerequisite("bpe_skewed_beats_counts",
                 "the skewed BPE compresses all ten languages better than the count "
                 "vocabulary of the same size on the same mix",
                 ("bpe skewed", BPT), ">", ("counts skewed", BPT)),
    prerequisite("bpe_balanced_beats_counts",
                 "the balanced BPE compresses all ten languages better than the count "
                 "vocabulary of the same size on the same mix",
                 ("bpe balanced", BPT), ">", ("counts balanced", BPT)),
    prerequisite("bpe_beats_bytes",
                 "the balanced BPE beats the uniform byte tokenizer by 0.5 bytes per token",
                 ("bpe balanced", BPT), ">", ("bytes", BPT), by=0.5),
    prerequisite("not_saturated",
                 "not saturated: the balanced BPE still needs more than 1.2 tokens per word on "
                 "the non-Latin languages (room for a gap)",
                 ("bpe balanced", FERT), ">", 1.2),
    claim("compression_gap",
          "(a) on non-Latin languages the skewed BPE's bytes per token is below 0.9 x the "
          "balanced BPE's (mean of per-language ratios)",
          (GAP, "bytes/token ratio (non-Latin)"), "<", 0.9),
    claim("fertility_gap",
          "(b) on non-Latin languages the skewed BPE needs more than 1.1 x the balanced BPE's "
          "tokens per word (mean of per-language ratios)",
          (GAP, "fertility ratio (non-Latin)"), ">", 1.1),
    claim("every_script",
          "(c) the skewed BPE compresses every one of the six non-Latin languages worse",
          (GAP, "non-Latin langs compressed worse"), ">", 5.5),
    claim("vocab_share",
          "(d) the skewed BPE gives non-Latin scripts at least 10 points less of its vocabulary",
          ("bpe skewed", SHARE), "<", ("bpe balanced", SHARE), by=0.1),
)

SEEDS = 3


def _study(ctx: Context):
  from tokenlab.config import load_config
  size = "tiny" if ctx.quick else "repro"
  return load_config(f"{EXPERIMENT}:size={size}").qtok


def _corpora(study, quick: bool) -> tuple[dict, dict]:
  """(train strings, held-out strings) per language; cached across seeds (same for all)."""
  from tokenlab.data import multilingual
  langs = study.langs.split(",")
  train = {l: multilingual.monolingual(l, "train") for l in langs}
  held = {l: multilingual.monolingual(l, study.split) for l in langs}
  if study.eval_docs:
    held = {l: v[:study.eval_docs] for l, v in held.items()}
  return train, held


def _total_bytes(study, train: dict) -> int:
  if study.budget_bytes:
    return int(study.budget_bytes)
  # The largest total whose dominant share 80% of the dominant train split can fill.
  have = sum(len(t.encode("utf-8")) for t in train[study.dominant])
  return int(0.8 * have / study.skew)


def run_seed(ctx: Context) -> Trial:
  import time
  from tokenlab.data.tokenizers import BytesTokenizer
  from tokenlab.evals import tokenizer_report as tr
  from tokenlab.methods import qtok
  study = _study(ctx)
  train, held = _corpora(study, ctx.quick)
  skewed_docs, balanced_docs = qtok.skewed_and_balanced_mixes(
      train, study.dominant, study.skew, _total_bytes(study, train), ctx.seed)
  t = time.perf_counter()
  toks = {"bytes": BytesTokenizer(),
          "counts skewed": qtok.count_vocabulary(skewed_docs, study.vocab_size),
          "counts balanced": qtok.count_vocabulary(balanced_docs, study.vocab_size),
          "bpe skewed": qtok.train_bpe(skewed_docs, study.vocab_size),
          "bpe balanced": qtok.train_bpe(balanced_docs, study.vocab_size)}
  print(f"[qtok] seed {ctx.seed}: tokenizers trained in {time.perf_counter() - t:.1f}s "
        f"(mixes of {sum(map(len, skewed_docs))} / {sum(map(len, balanced_docs))} bytes)",
        flush=True)
  reports = {name: tr.report(tok, held, name) for name, tok in toks.items()}
  non_latin = [l for l, m in reports["bytes"]["languages"].items() if m["script"] != "Latin"]
  rows = []
  for name, r in reports.items():
    langs = r["languages"]
    rows += [(name, BPT, float(np.mean([m["bytes_per_token"] for m in langs.values()]))),
             (name, BPT_NL, float(np.mean([langs[l]["bytes_per_token"] for l in non_latin]))),
             (name, FERT, float(np.mean([langs[l]["fertility"] for l in non_latin]))),
             (name, "fertility (en)", langs[study.dominant]["fertility"]),
             (name, SHARE, qtok.non_latin_share(r["vocabulary"]))]
  gap = qtok.script_gap(reports["bpe skewed"], reports["bpe balanced"], non_latin)
  dom = study.dominant
  rows += [(GAP, "bytes/token ratio (non-Latin)", gap["bytes_per_token_ratio"]),
           (GAP, "fertility ratio (non-Latin)", gap["fertility_ratio"]),
           (GAP, "non-Latin langs compressed worse", gap["langs_worse"]),
           (GAP, f"bytes/token ratio ({dom}, the price of balance)",
            reports["bpe skewed"]["languages"][dom]["bytes_per_token"]
            / reports["bpe balanced"]["languages"][dom]["bytes_per_token"])]
  for name in ("bpe skewed", "bpe balanced"):
    rows += [(name, f"bytes/token {l}", m["bytes_per_token"])
             for l, m in reports[name]["languages"].items()]
  if not ctx.quick:
    tr.write([reports[n] for n in ARMS], ctx.path("report"))
  return Trial(rows, {"reports": reports, "non_latin": non_latin})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from tokenlab.evals import tokenizer_report as tr
  d0 = trials[0].data
  langs = list(d0["reports"]["bytes"]["languages"])
  names = ("bytes", "counts skewed", "counts balanced", "bpe skewed", "bpe balanced")
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    vals = np.array([[t.data["reports"][name]["languages"][l]["bytes_per_token"] for l in langs]
                     for t in trials])
    axes[0].bar(np.arange(len(langs)) + i * width, vals.mean(0), width,
                yerr=vals.std(0) if len(trials) > 1 else None, label=name)
    fert = np.array([[t.data["reports"][name]["languages"][l]["fertility"] for l in langs]
                     for t in trials])
    axes[1].bar(np.arange(len(langs)) + i * width, fert.mean(0), width, label=name)
  labels = [f"{l}\n{d0['reports']['bytes']['languages'][l]['script']}" for l in langs]
  for ax, title in ((axes[0], "UTF-8 bytes per token (higher = better compression)"),
                    (axes[1], "tokens per word (lower is better)")):
    ax.set_xticks(np.arange(len(langs)) + 0.4 - width / 2, labels, fontsize=7)
    ax.set_title(f"{title}; held-out strings, {len(trials)} seed(s)", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.out("qtok_per_language.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  # Qtok's own view of the two BPEs of the first seed: scripts, lengths, per language.
  report_png = tr.plot([d0["reports"]["bpe skewed"], d0["reports"]["bpe balanced"]],
                       ctx.out("qtok_report_seed0.png"))
  tables = ctx.out("tokenizer_report_seed0.md")
  with open(tables, "w") as f:
    f.write(f"# `tokenizer_report` of every arm, seed {ctx.seed}\n\n"
            + tr.markdown([d0["reports"][n] for n in names]))
  notes = ("The full Qtok tables of every arm of the first seed (vocabulary by category and "
           "script, whole-word tokens, lengths; per language tokens/word, bytes/token, "
           "one-token words) are in tokenizer_report_seed0.md. Non-Latin languages (by the "
           "dominant script of their held-out text): " + ", ".join(d0["non_latin"]) + ".")
  return [path, report_png], notes
