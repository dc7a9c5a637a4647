"""Mini-reproduction of MergeDNA on the synthetic `dna` genome.

Arms (same data, steps, batch, optimizer, depth; `experiments/mergedna.py:size=small`):
  mergedna  learned local-window merging, MTR + 0.25 latent MTR + AMTM (the paper)
  kmer      fixed non-overlapping 4-mers (about the same compression), same losses
  mlm       learned merging architecture, plain masked LM (15% of bases, uniform)

Measured: the mean length (bases) of the token holding a base, per region type of the base
(background / tandem repeat / planted motif) on held-out windows, and a linear probe
(logistic regression on frozen [mean, max]-pooled latent-encoder features) for the presence
of each planted motif, trained on train windows and scored on validation windows. The
untrained mergedna network is probed too, as the floor. --quick trains only the tiny
mergedna arm for 3 steps.
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import HELD, NOT_HELD, PARTLY, Context, Report

CLAIM = ("MergeDNA's learned merging gives long tokens on repeats and fine tokens on motifs, "
         "and its features predict motif presence better than fixed k-mer tokens or plain "
         "masked LM at the same compression.")

EXPERIMENT = "experiments/mergedna.py"
ARMS = {"mergedna": "", "kmer": ",tokenizer=kmer", "mlm": ",objective=mlm"}
REGIONS = ("background", "repeat", "motif")


def _records(config, split: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(bases (n, L-1) uint8 bytes, base labels (n, L-1), motif_present (n, num_motifs))."""
  from tokenlab.data import config as data_config
  from tokenlab.data import sources
  cfg = data_config.resolve(config.data)
  src = sources.data_source(cfg, split)
  seqs, labels, present = [], [], []
  for i in range(min(n, len(src))):
    rec = src[i]
    seq = rec["sequence"]
    seq = seq.encode() if isinstance(seq, str) else bytes(seq)
    seqs.append(np.frombuffer(seq, np.uint8)[:-1])
    labels.append(np.asarray(rec["labels"])[:-1])
    present.append(np.asarray(rec["motif_present"]))
  return (np.stack(seqs).astype(np.int32), np.stack(labels).astype(np.int32),
          np.stack(present))


def _load(ctx: Context, arm: str, config):
  import jax
  from tokenlab.train.inference import load_trained
  seq, bsz = config.data.seq_len, config.train.batch_size
  example = {k: np.zeros((bsz, seq), np.float32 if k == "loss_mask" else np.int32)
             for k in ("inputs", "targets", "segment_ids", "positions", "target_bytes",
                       "loss_mask", "labels")}
  run = load_trained(ctx.path(arm), example)
  return run.method, jax.device_get(run.params)


_JIT: dict = {}


def _jitted(method):
  """(features, tokenize) jitted once per model config (arms with one config share them)."""
  import jax
  key = method.config
  if key not in _JIT:
    _JIT[key] = (jax.jit(method.features), jax.jit(method.tokenize))
  return _JIT[key]


def _measure(method, params, data) -> dict[str, float]:
  """Token length per region (held-out) and the motif-presence probe of one model."""
  from tokenlab.evals.linear_probe import extract_features, linear_probe
  (tr_x, _, tr_y), (va_x, va_lab, va_y) = data
  features, tokenize = _jitted(method)
  feats = lambda x: features(params, x)
  f_tr = extract_features(feats, tr_x, batch_size=64)
  f_va = extract_features(feats, va_x, batch_size=64)
  probe = linear_probe(f_tr, tr_y, f_va, va_y)
  sizes = []
  for s in range(0, len(va_x), 64):
    t = tokenize(params, va_x[s:s + 64])
    sizes.append(np.take_along_axis(np.asarray(t["sizes"]), np.asarray(t["group_ids"]), 1))
  size = np.concatenate(sizes)
  out = {f"token_len/{name}": float(size[va_lab == v].mean()) if (va_lab == v).any()
         else float("nan") for v, name in enumerate(REGIONS)}
  out["bases_per_token"] = float(va_x.shape[1] / method.config.num_tokens(va_x.shape[1]))
  out.update({f"probe/{k}": v for k, v in probe.items() if "/" not in k})
  return out


def _plot(path: str, results: dict[str, dict[str, float]]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  arms = list(results)
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
  w = 0.8 / len(REGIONS)
  for i, name in enumerate(REGIONS):
    a1.bar(np.arange(len(arms)) + i * w, [results[a][f"token_len/{name}"] for a in arms], w,
           label=name)
  a1.set_xticks(np.arange(len(arms)) + w)
  a1.set_xticklabels(arms)
  a1.set_ylabel("bases per token (held-out)")
  a1.legend(fontsize=8)
  a1.set_title("token length by region", fontsize=9)
  a2.bar(arms, [results[a].get("probe/auc", 0.5) for a in arms], color="#4c72b0")
  a2.set_ylim(0.4, 1.0)
  a2.set_ylabel("motif-presence probe AUC")
  a2.set_title("linear probe on frozen latent features", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(ctx: Context) -> Report:
  import jax
  from tokenlab.cli import resolve_experiment
  from tokenlab.config import load_config
  from tokenlab.registry import build_method
  size = "tiny" if ctx.quick else "small"
  steps = ctx.steps(200, 3)
  common = [f"--config.train.steps={steps}", f"--config.train.eval_every={steps}",
            f"--config.checkpoint.every_steps={steps}",
            f"--config.train.eval_batches={2 if ctx.quick else 10}"]
  # --quick trains only the mergedna arm (the kmer and mlm paths are unit-tested): compiles
  # dominate a quick run.
  arms = {a: e for a, e in ARMS.items() if not ctx.quick or a == "mergedna"}
  trained = {arm: ctx.train(f"{EXPERIMENT}:size={size}{extra}", arm, common)
             for arm, extra in arms.items()}
  config = load_config(resolve_experiment(f"{EXPERIMENT}:size={size}"), [])
  n_train, n_val = (32, 16) if ctx.quick else (1000, 200)
  tr = _records(config, "train", n_train)
  va = _records(config, "validation", n_val)
  results = {}
  for arm in arms:
    method, params = _load(ctx, arm, config)
    results[arm] = _measure(method, params, (tr, va))
  untrained = build_method(config.model)
  params0 = untrained.init(jax.random.key(ctx.seed), {"inputs": np.asarray(tr[0][:2])})
  results["untrained"] = _measure(untrained, params0, (tr, va))
  fig = ctx.path("mergedna_tokens_probe.png")
  _plot(fig, results)

  rows = []
  for arm, res in results.items():
    for name in REGIONS:
      rows.append((arm, f"token length, {name} (bases)", res[f"token_len/{name}"]))
    rows.append((arm, "bases per token", res["bases_per_token"]))
    rows.append((arm, "motif probe AUC", res.get("probe/auc", float("nan"))))
    rows.append((arm, "motif probe accuracy", res["probe/accuracy"]))
    if arm in trained:
      rows.append((arm, "eval loss", trained[arm].get("eval/loss", float("nan"))))
  rows.append(("all", "motif probe majority accuracy", results["mergedna"]
               ["probe/majority_accuracy"]))
  rows.append(("all", "steps", steps))
  md = results["mergedna"]
  checks = {
      "repeats get longer tokens than background":
          md["token_len/repeat"] > md["token_len/background"],
      "motifs get shorter tokens than background":
          md["token_len/motif"] < md["token_len/background"],
      "probe AUC > fixed k-mers":
          md.get("probe/auc", float("nan")) > results.get("kmer", {}).get("probe/auc",
                                                                          float("nan")),
      "probe AUC > plain masked LM":
          md["probe/auc"] > results.get("mlm", {}).get("probe/auc", float("nan")),
  }
  ok = sum(checks.values())
  verdict = HELD if ok == len(checks) else NOT_HELD if ok == 0 else PARTLY
  reason = "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in checks.items())
  c = config.model
  notes = (f"Toy scale: windows of {config.data.options.length} bases, d_model={c.d_model}, "
           f"{c.merge_layers} merge layers (window {c.window}, {c.merge_r} pairs per window, so "
           f"at most {2 ** c.merge_layers} bases per token), batch {config.train.batch_size}, "
           f"{steps} steps, one seed. Probe: logistic regression per motif on {len(tr[0])} "
           f"train / {len(va[0])} validation windows, [mean, max]-pooled latent-encoder "
           "features. Merge decisions are ToMe-style (no gradient through the matching).")
  return Report(CLAIM, rows, verdict, reason, [fig], notes)
