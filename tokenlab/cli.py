"""The `tokenlab` command: train | eval | sample | plot | data | plan | scale | repro |
bench | grow | transfer | tokenizer-report | audio-report | needle.

  tokenlab train --config experiments/transformer_lm.py:size=tiny --workdir runs/x \\
      --config.optimizer.lr=3e-4
  tokenlab eval --workdir runs/x
  tokenlab sample --workdir runs/x --prompt "def "
  tokenlab plot runs/x
  tokenlab data build pysrc
  tokenlab bench trainer
  tokenlab repro fourier_head                 # a paper's mini-reproduction (tokenlab repro)
  tokenlab train --config experiments/tokenformer.py:size=tiny --workdir runs/tf
  tokenlab grow runs/tf --workdir runs/tf_x4 --factor 4     # TokenFormer progressive scaling
  tokenlab transfer --from RUN --tokenizer bpe:2048 --init mean_subtokens --workdir DIR

User-fixable errors (:class:`tokenlab.errors.TokenlabError`) end with one line on stderr and
exit status 2, never a traceback wall.
"""

from __future__ import annotations

import argparse
import os
import sys

from tokenlab import config as config_lib
from tokenlab.argparsing import Parser
from tokenlab.errors import TokenlabError

DEFAULT_EXPERIMENT = "experiments/hnet.py:size=small"


# Kept importable from here for callers written before they moved beside the config loader.
resolve_experiment = config_lib.resolve_experiment


def _skip_absent_tpu() -> None:
  """Keeps jax from starting libtpu on a machine with no TPU attached.

  The `tpu` and `test` extras install libtpu; without this, every command on a CPU or GPU
  machine would first try the TPU runtime and print its start-up errors. Only when the user
  has not chosen (`JAX_PLATFORMS` unset), no TPU device node exists and no CUDA GPU is
  present is CPU chosen; a TPU VM (/dev/accel*, /dev/vfio) and GPU machines are left alone.
  """
  import glob
  if "JAX_PLATFORMS" in os.environ or "jax" in sys.modules:
    return
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/dev/nvidia[0-9]*"):
    return
  os.environ["JAX_PLATFORMS"] = "cpu"


def _quiet_logs() -> None:
  import logging
  try:
    import absl.logging
    absl.logging.set_verbosity(absl.logging.ERROR)
  except ImportError:
    pass
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)


def _cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.train import distributed
  distributed.maybe_initialize()
  from tokenlab.config import load_config
  from tokenlab.train.loop import train
  config = load_config(args.config, args.parser.overrides(rest))
  result = train(config, args.workdir)
  import jax
  if jax.process_index() == 0:
    keys = [k for k in sorted(result) if k.startswith(("eval/", "train/loss", "perf/"))]
    print("final: " + ", ".join(f"{k}={result[k]:.4g}" for k in keys
                                if isinstance(result[k], float)))
    if "train/skipped_steps" in result:
      print(f"skipped steps (non-finite loss or gradient, on_nonfinite=skip): "
            f"{result['train/skipped_steps']} of {result.get('info/steps_run', '?')}")
    print(f"workdir: {args.workdir} (metrics.jsonl, tb/, checkpoints/; "
          f"`tokenlab plot {args.workdir}` for curves)")
  return 0


def _first_batch(config, split: str, batch_size: int):
  from tokenlab import data as data_lib
  from tokenlab.train.loop import METHOD_DATA, data_errors, method_iterator_fns
  if config.data.get("name") == METHOD_DATA:
    # The method makes its own data (e.g. clips encoded by a frozen tokenizer).
    train_fn, eval_fn = method_iterator_fns(config)
    return next(iter((eval_fn if split == "validation" else train_fn)(batch_size,
                                                                       config.seed)))
  with data_errors(config.data):
    it = data_lib.make_iterator(config.data, split=split, batch_size=batch_size,
                                seed=config.seed, shuffle=False, num_epochs=1)
    return next(iter(it))


def _cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
  import jax
  import flax.linen as nn
  from tokenlab import data as data_lib
  from tokenlab.train.inference import load_config_from_workdir, load_trained
  from tokenlab.train.metrics import reduce_metrics
  from tokenlab.train.partitioning import batch_sharding
  from tokenlab.train.step import make_eval_step
  if args.batches < 0:
    raise TokenlabError(f"--batches {args.batches}: give the number of batches to evaluate, "
                        f"or 0 for the whole split")
  config = load_config_from_workdir(args.workdir)
  batch_size = config.train.batch_size
  run = load_trained(args.workdir, _first_batch(config, args.split, batch_size), args.step)
  eval_step = jax.jit(make_eval_step(run.method, jax.numpy.dtype(config.train.compute_dtype)))
  results = []
  it = data_lib.make_iterator(config.data, split=args.split, batch_size=batch_size,
                              seed=config.seed, shuffle=False, num_epochs=1)
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    for i, batch in enumerate(it):
      if args.batches and i >= args.batches:
        break
      batch = {k: jax.device_put(v, batch_sharding(run.mesh, run.rules, v.ndim, k))
               for k, v in batch.items()}
      results.append(eval_step(run.params, batch, jax.random.key(0), run.model_state))
  metrics = reduce_metrics(results)
  print(f"step {run.step}, split {args.split}, {len(results)} batches: " +
        ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
  return 0


def _cmd_sample(args: argparse.Namespace, rest: list[str]) -> int:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from tokenlab.data import tokenizers
  from tokenlab.train.inference import load_config_from_workdir, load_trained
  if args.num < 1:
    raise TokenlabError(f"--num {args.num}: the number of samples must be at least 1")
  if args.temperature < 0:
    raise TokenlabError(f"--temperature {args.temperature} must be >= 0 (0 = greedy)")
  if args.top_k < 0:
    raise TokenlabError(f"--top-k {args.top_k} must be >= 0 (0 = all tokens)")
  config = load_config_from_workdir(args.workdir)
  if _data_kind(config) in ("image", "video"):
    return _sample_images(args, config)
  if _data_kind(config) == "audio":
    return _sample_audio(args, config)
  vocab = config.model.get("vocab_size")
  if isinstance(vocab, int) and args.top_k > vocab:
    raise TokenlabError(f"--top-k {args.top_k} is larger than the model's vocabulary "
                        f"({vocab} tokens); use 1..{vocab}, or 0 for all")
  run = load_trained(args.workdir, _first_batch(config, "validation", 1), args.step)
  if not hasattr(run.method, "sample"):
    raise TokenlabError(f"method '{config.model.name}' has no sampler")
  tok = tokenizers.get_tokenizer(config.data)
  # The prompt's bytes as given on the command line (os.fsencode undoes the surrogate escapes
  # Python uses for bytes that are not UTF-8): bytes in, bytes out.
  prompt = np.asarray(tok.encode(os.fsencode(args.prompt)), np.int32)
  length = args.length or config.data.seq_len
  if len(prompt) == 0 or len(prompt) >= length:
    raise TokenlabError(f"prompt must be 1..{length - 1} tokens long (it is {len(prompt)}); "
                        f"shorten it or raise --length")
  buf = np.zeros((args.num, length), np.int32)
  buf[:, :len(prompt)] = prompt
  with jax.set_mesh(run.mesh):
    out = jax.jit(lambda p, b, r: run.method.sample(
        p, b, np.full((args.num,), len(prompt), np.int32), r, temperature=args.temperature,
        top_k=args.top_k))(run.params, jnp.asarray(buf), jax.random.key(args.seed))
  for row in np.asarray(out):
    text = tok.decode(row).decode("utf-8", errors="replace")
    print("-" * 72 + "\n" + text)
  return 0


def _data_kind(config) -> str | None:
  """The registered kind ('text', 'image', 'video', 'audio') of the run's dataset, or None.
  A method that makes its own data (config.data.name='method') names what its `sample`
  returns in a class attribute `sample_kind` (e.g. 'video' for clips from a frozen video
  tokenizer)."""
  from tokenlab import registry
  from tokenlab.data import DATASETS
  spec = DATASETS.get(config.data.get("name"))
  if spec is None:
    name = config.model.get("name")
    cls = registry.get_method_class(name) if name in registry.method_names() else None
    return getattr(cls, "sample_kind", None)
  return spec.kind


def _sample_images(args: argparse.Namespace, config) -> int:
  """Image and video methods: `method.sample(params, batch, rng[, state=])` on --num
  validation images (clips) returns images (N, H, W, C) or a grid (rows, N, H, W, C) in
  [0, 1] (a tokenizer: the images above their reconstructions; a generator: samples,
  conditioned on the batch's labels), written as one PNG to --out (default
  WORKDIR/samples.png); video methods return clips (N, T, H, W, C) or (rows, N, T, H, W, C),
  written as an animated GIF (--out x.gif, the default WORKDIR/samples.gif) or a PNG strip
  (--out x.png), one clip per row, each clip's rows together (input above reconstruction)."""
  from tokenlab.evals.image import save_image_grid
  video = _data_kind(config) == "video"
  out_path = args.out or os.path.join(args.workdir, "samples.gif" if video else "samples.png")
  if video and not out_path.lower().endswith((".gif", ".png")):
    raise TokenlabError(f"--out {out_path}: a video method writes a GIF (--out x.gif) or a "
                        f"PNG strip (--out x.png)")
  batch = _first_batch(config, "validation", args.num)
  run, out = _run_sampler(args, config, batch)
  if video:
    from tokenlab.evals.video import save_video_gif, save_video_strip
    if out.ndim == 6:   # (rows, N, ...) -> (N * rows, ...): clip n's rows one under another
      out = out.swapaxes(0, 1).reshape(-1, *out.shape[2:])
    write = save_video_gif if out_path.lower().endswith(".gif") else save_video_strip
    path = write(out, out_path)
  else:
    path = save_image_grid(out, out_path)
  print(f"wrote {path} (step {run.step}, {args.num} validation {'clips' if video else 'images'})")
  return 0


def _run_sampler(args: argparse.Namespace, config, batch):
  """(run, out): the trained run in --workdir and `method.sample(params, batch, rng[,
  state=])` on `batch`, jitted under the run's mesh, on the host."""
  import jax
  from tokenlab.train.inference import load_trained
  run = load_trained(args.workdir, batch, args.step)
  if not hasattr(run.method, "sample"):
    raise TokenlabError(f"method '{config.model.name}' has no sampler")
  stateful = bool(run.method.state_collections)
  if callable(getattr(run.method, "tokenizer", None)):
    # Methods over frozen pieces (a tokenizer, a codec) load them on first use: here, not
    # inside the jit trace.
    run.method.tokenizer()
  with jax.set_mesh(run.mesh):
    out = jax.jit(lambda p, b, r, s: run.method.sample(
        p, b, r, **({"state": s} if stateful else {})))(
            run.params, batch, jax.random.key(args.seed), run.model_state)
  return run, jax.device_get(out)


def _sample_audio(args: argparse.Namespace, config) -> int:
  """Audio methods: `method.sample(params, batch, rng[, state=])` on --num validation
  utterances returns {'waveform': float (N, S) or (rows, N, S) in [-1, 1] at 16 kHz,
  'lengths': int (N,) or (rows, N) valid samples} (or the waveform alone: all S samples
  valid). Written as WAV files into the folder --out (default WORKDIR/samples):
  sample_<n>.wav, or sample_<n>_<row>.wav with rows named by the method's `sample_rows`
  (e.g. ('input', 'codec')), plus mels.png with every file's log-mel."""
  import numpy as np
  from tokenlab.evals.audio import save_mel_panels, save_wav
  out_dir = args.out or os.path.join(args.workdir, "samples")
  if out_dir.lower().endswith(".wav") or os.path.isfile(out_dir):
    raise TokenlabError(f"--out {out_dir}: an audio method writes a folder of WAV files "
                        f"(one per sample); give a folder, e.g. --out {args.workdir}/samples")
  batch = _first_batch(config, "validation", args.num)
  run, out = _run_sampler(args, config, batch)
  wave = np.asarray(out["waveform"] if isinstance(out, dict) else out, np.float32)
  lengths = (np.asarray(out["lengths"]) if isinstance(out, dict) and "lengths" in out
             else np.full(wave.shape[:-1], wave.shape[-1]))
  if wave.ndim == 2:
    wave, lengths = wave[None], lengths[None]
  if wave.ndim != 3 or lengths.shape != wave.shape[:2]:
    raise TokenlabError(f"method '{config.model.name}'.sample returned a waveform of shape "
                        f"{wave.shape} with lengths {lengths.shape}; an audio sampler returns "
                        f"(N, S) or (rows, N, S) with lengths (N,) or (rows, N)")
  broken = ~np.isfinite(wave).all(axis=-1)
  if broken.any():
    raise TokenlabError(f"method '{config.model.name}'.sample returned non-finite samples (NaN "
                        f"or inf) in {int(broken.sum())} of {broken.size} waveforms at step "
                        f"{run.step}: a diverged checkpoint? (try --step with an earlier "
                        f"one); nothing written")
  rows = tuple(getattr(run.method, "sample_rows", ()))
  if wave.shape[0] > 1 and len(rows) != wave.shape[0]:
    rows = tuple(str(r) for r in range(wave.shape[0]))
  os.makedirs(out_dir, exist_ok=True)
  texts = _sentences(batch)
  paths, titles, waves = [], [], []
  for n in range(wave.shape[1]):
    for r in range(wave.shape[0]):
      name = f"sample_{n}.wav" if wave.shape[0] == 1 else f"sample_{n}_{rows[r]}.wav"
      clip = wave[r, n, :int(lengths[r, n])]
      paths.append(save_wav(os.path.join(out_dir, name), clip))
      waves.append(clip)
      titles.append(f"{name}: {texts[n]!r}" if texts else name)
  png = save_mel_panels(os.path.join(out_dir, "mels.png"), waves, titles,
                        mel_bins=int(config.data.get("mel_bins") or 80))
  for path, title in zip(paths, titles):
    print(f"wrote {path}" + (f"  ({title.split(': ', 1)[1]})" if texts else ""))
  print(f"wrote {png} (step {run.step}, {args.num} validation utterances)")
  return 0


def _sentences(batch) -> list[str]:
  """The sentences of a `speech` batch (its 'words' ids), or [] for other batches."""
  import numpy as np
  if "words" not in batch or "word_mask" not in batch:
    return []
  from tokenlab.data.speech import WORDS
  words, mask = np.asarray(batch["words"]), np.asarray(batch["word_mask"]) > 0
  return [" ".join(WORDS[int(w)] for w in row[m]) for row, m in zip(words, mask)]


def _cmd_plot(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.plotting import plot_workdir
  paths = plot_workdir(args.workdir, log_loss=args.log_loss)
  print(f"summary: {paths[0]}")
  for path in paths[1:]:
    print(path)
  return 0


def _cmd_data(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.data import cli as data_cli
  return data_cli.main(rest)


def _cmd_plan(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab import plan
  return plan.main(rest)


def _cmd_scale(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab import scale
  return scale.main(rest)


def _cmd_repro(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab import repro
  return repro.main(rest)


def _cmd_grow(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.methods.tokenformer import grow_main
  return grow_main(rest)


def _cmd_transfer(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.transfer.harness import run_transfer
  aux = {}
  for item in args.aux:
    key, eq, value = item.partition("=")
    if not eq or not key:
      raise TokenlabError(f"--aux {item}: write KEY=VALUE")
    aux[key] = value
  split = lambda text: [w.strip() for w in text.split(",") if w.strip()]
  from tokenlab.repro import compile_cache
  # Every initialiser of a target adapts the same programs: later ones load them.
  with compile_cache(os.path.join(args.workdir, ".jax_cache")):
    run_transfer(args.source, split(args.tokenizer), split(args.init), args.workdir,
                 steps=args.steps, modes=split(args.mode), lr=args.lr, seed=args.seed,
                 aux=aux, progress=args.progress)
  return 0


def _cmd_tokenizer_report(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.evals import tokenizer_report
  if args.max_docs < 0:
    raise TokenlabError(f"--max-docs {args.max_docs}: give a number of documents per "
                        "language, or 0 for all")
  tokenizer_report.main(args.tokenizer, corpus=args.corpus, split=args.split,
                        max_docs=args.max_docs, out_dir=args.out)
  return 0


def _cmd_audio_report(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.evals import audio_report
  try:
    units = tuple(int(k) for k in args.units.split(",") if k.strip())
  except ValueError:
    raise TokenlabError(f"--units {args.units}: give k-means sizes, comma-separated, e.g. "
                        f"50,200") from None
  if args.max_utterances < 0 or args.si_snr_utterances < 0 or any(k < 2 for k in units):
    raise TokenlabError("--max-utterances and --si-snr-utterances must be >= 0 and every "
                        "--units k >= 2")
  audio_report.main(args.tokenizer, recognizer=args.recognizer, out_dir=args.out,
                    train=args.train, max_utterances=args.max_utterances,
                    si_snr_utterances=args.si_snr_utterances, units=units)
  return 0


def _cmd_needle(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.evals import needle
  if args.per_cell < 1 or args.hops < 1:
    raise TokenlabError("--per-cell and --hops must be at least 1")
  try:
    lengths = tuple(int(x) for x in args.lengths.split(",") if x.strip())
  except ValueError:
    raise TokenlabError(f"--lengths {args.lengths}: give context lengths in tokens, "
                        f"comma-separated, e.g. 32,64,128") from None
  needle.main(args.run, lengths=lengths, per_cell=args.per_cell, hops=args.hops,
              key_len=args.key_len, out_dir=args.out, step=args.step)
  return 0


_TOKENIZER_REPORT_EPILOG = """\
TOKENIZER: bytes; KIND:VOCAB[@LANG] with KIND bpe, sentencepiece, lzw or lib, trained on the
multilingual monolingual train split of LANG (default en), e.g. bpe:1024@ru; a run directory
(the tokenizer its config.json names); or a tokenizer file (tokenlab BPE .json,
SentencePiece .model). Several are reported side by side. Per language: tokens per word,
bytes per token, words that are one token, documents it cannot encode (Qtok, issue 21).
example:
  tokenlab tokenizer-report bytes bpe:300@ru --corpus multilingual:en,ru --max-docs 50 --out /tmp/tokreport
"""


_AUDIO_REPORT_EPILOG = """\
Rows: each tokenizer (a speech_ssl run: one row per --units k), 'log-mel (input)' (upper
bound) and 'mean mel (silence)' (a decoder ignoring its tokens: lower bound). Every run must
use the same `speech` options and mel bins as the recogniser.
examples (synopses; the --train one trains six tokenizers and the recogniser, ~13 CPU min):
  tokenlab audio-report --train --out DIR
  tokenlab audio-report CODEC_RUN SSL_RUN --recognizer RECOGNIZER_RUN --out DIR
"""


_TRANSFER_EPILOG = """\
KIND:VOCAB[@LANG] names a tokenizer trained (and cached) on the run's dataset, e.g. bpe:1024
(another vocabulary), bpe:2048 (longer tokens, multi-word merges), sentencepiece:1024@de (a
second language); 'same' is the run's own. Each row: tokens per character (and vs T0),
bits per char / per byte on the target's validation text zero-shot and after --steps steps.
example (a tiny source run, then its transfer to a German tokenizer):
  tokenlab train --config experiments/transfer.py:size=tiny --workdir runs/t0
  tokenlab transfer --from runs/t0 --tokenizer sentencepiece:512@de --init random,mean_subtokens --workdir runs/transfer --steps 20
"""


def _cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab import bench
  if args.name is None:
    if rest and rest[0] not in ("-h", "--help"):
      args.parser.reject(rest)
    print(bench.usage() if rest else "available benchmarks: " + ", ".join(bench.available()))
    return 0
  return bench.run(args.name, rest)


_TRAIN_EPILOG = """\
Any config key can be overridden after the flags, as --config.a.b=value or --config.a.b value
(an unknown key is refused naming the nearest one). Example:

  tokenlab train --config experiments/transformer_lm.py:size=tiny --workdir runs/lm \\
      --config.optimizer.lr=1e-3 --config.train.steps 200

--config takes a file of your own, or a shipped experiment by name (experiments/NAME.py, found
from the installed package wherever you run). Re-running the same command resumes the run.
"""


def _sub(sub, name: str, help_: str, example: str, **kwargs) -> Parser:
  """A subcommand whose help says what it does, its options and one example."""
  return sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                        epilog=kwargs.pop("epilog", f"example:\n  {example}\n"), **kwargs)


def build_parser() -> Parser:
  parser = Parser(prog="tokenlab", description=__doc__.split("\n\nUser-fixable")[0])
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = _sub(sub, "train", "train (or resume) an experiment in a workdir", "",
           epilog=_TRAIN_EPILOG, passthrough=True)
  p.add_argument("--config", default=DEFAULT_EXPERIMENT,
                 help=f"experiment file[:arg] (default {DEFAULT_EXPERIMENT})")
  p.add_argument("--workdir", default="runs/default",
                 help="run directory: config.json, metrics.jsonl, tb/, checkpoints/ "
                      "(default runs/default)")
  p.set_defaults(func=_cmd_train, parser=p)

  p = _sub(sub, "eval", "evaluate a checkpoint of a workdir on a whole split",
           "tokenlab eval --workdir runs/lm --split validation")
  p.add_argument("--workdir", required=True, help="a workdir written by `tokenlab train`")
  p.add_argument("--split", default="validation", help="data split (default validation)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--batches", type=int, default=0, help="batches to evaluate (0 = the whole "
                 "split)")
  p.set_defaults(func=_cmd_eval, parser=p, strict=True)

  p = _sub(sub, "sample", "generate from a trained generative method (bytes in, bytes out)",
           'tokenlab sample --workdir runs/lm --prompt "def " --temperature 0.7 --top-k 20')
  p.add_argument("--workdir", required=True, help="a workdir written by `tokenlab train`")
  p.add_argument("--prompt", default="def ", help="text the samples continue (default 'def ')")
  p.add_argument("--num", type=int, default=2, help="number of samples (default 2)")
  p.add_argument("--length", type=int, default=0, help="total tokens, prompt included "
                 "(default: the run's seq_len)")
  p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature "
                 "(default 0.8; 0 = greedy)")
  p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens "
                 "(0 = all)")
  p.add_argument("--seed", type=int, default=0, help="sampling seed")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--out", default="", help="image methods: PNG path of the grid (default "
                 "WORKDIR/samples.png); video methods: x.gif (animated, default "
                 "WORKDIR/samples.gif) or x.png (a strip of frames); audio methods: a folder "
                 "of WAV files and mels.png (default WORKDIR/samples)")
  p.set_defaults(func=_cmd_sample, parser=p, strict=True)

  p = _sub(sub, "plot", "write PNG curves of a workdir's metrics into WORKDIR/plots: a run "
           "summary and one figure per metric group", "tokenlab plot runs/lm --log-loss")
  p.add_argument("workdir", help="a workdir written by `tokenlab train`")
  p.add_argument("--log-loss", action="store_true", help="log-scaled y axis for loss-like "
                 "metrics (loss, NLL, bits per byte)")
  p.set_defaults(func=_cmd_plot, parser=p, strict=True)

  p = _sub(sub, "transfer", "swap a trained LM's tokenizer: initialise the new embeddings, "
           "evaluate zero-shot and after k adaptation steps, write results.{json,md}", "",
           epilog=_TRANSFER_EPILOG)
  p.add_argument("--from", dest="source", required=True, help="workdir of a transformer_lm "
                 "run with a trained tokenizer (experiments/transfer.py)")
  p.add_argument("--tokenizer", required=True, help="target tokenizer(s), comma-separated: "
                 "KIND:VOCAB[@LANG] or same")
  p.add_argument("--init", default="random,mean_subtokens", help="embedding initialiser(s), "
                 "comma-separated (default random,mean_subtokens)")
  p.add_argument("--workdir", required=True, help="where the swapped and adapted runs and "
                 "results.json / results.md go")
  p.add_argument("--steps", type=int, default=100, help="adaptation steps k (default 100; 0 = "
                 "zero-shot only)")
  p.add_argument("--mode", default="embeddings,full", help="adaptation: embeddings (only "
                 "embedding rows train), full, or both comma-separated (default both)")
  p.add_argument("--lr", type=float, default=0.0, help="adaptation learning rate (default: "
                 "the run's)")
  p.add_argument("--seed", type=int, default=0, help="seed of randomly initialised rows")
  p.add_argument("--aux", action="append", default=[], metavar="KEY=VALUE",
                 help="side data for an initialiser (repeatable)")
  p.add_argument("--progress", action="store_true", help="progress bars while adapting")
  p.set_defaults(func=_cmd_transfer, parser=p, strict=True)

  p = _sub(sub, "tokenizer-report", "report a tokenizer's quality (Qtok): vocabulary by "
           "Unicode category and script, whole-word tokens, token lengths, and per language "
           "fertility and bytes per token; a table, report.json and a PNG", "",
           epilog=_TOKENIZER_REPORT_EPILOG)
  p.add_argument("tokenizer", nargs="+", help="tokenizer spec(s): bytes, KIND:VOCAB[@LANG], a "
                 "run directory or a tokenizer file")
  p.add_argument("--corpus", default="multilingual", help="multilingual (all 39 languages), "
                 "multilingual:L1,L2,... or a UTF-8 text file, one document per line (default "
                 "multilingual)")
  p.add_argument("--split", default="validation", help="multilingual split (default "
                 "validation: strings no tokenizer here trained on)")
  p.add_argument("--max-docs", type=int, default=0, help="documents per language (0 = all)")
  p.add_argument("--out", default="tokenizer_report", help="directory for report.md, "
                 "report.json, report.png (default tokenizer_report)")
  p.set_defaults(func=_cmd_tokenizer_report, parser=p, strict=True)

  p = _sub(sub, "audio-report", "the audio-token benchmark (issue 19): bitrate, codebook "
           "usage and perplexity, mel-L1, Griffin-Lim SI-SNR, phoneme error rate of "
           "reconstructions, phoneme and speaker probes and token-LM perplexity of audio "
           "tokenizers beside the input and mean-mel rows; a table, report.json and a PNG", "",
           epilog=_AUDIO_REPORT_EPILOG)
  p.add_argument("tokenizer", nargs="*", help="tokenizer run directories (audio_codec, "
                 "speech_ssl), or with --train experiment specs FILE.py[:ARG] (default with "
                 "--train: three RVQ and two FSQ codecs and speech_ssl units, cpu size)")
  p.add_argument("--recognizer", default="", help="phoneme_recognizer run (or with --train a "
                 "spec; default experiments/phoneme_recognizer.py:size=cpu)")
  p.add_argument("--train", action="store_true", help="train the experiment specs into "
                 "OUT/runs/ first (finished runs there are reused)")
  p.add_argument("--units", default="50,200", help="k-means unit counts of speech_ssl runs, "
                 "one row each (default 50,200)")
  p.add_argument("--max-utterances", type=int, default=0, help="utterances per split (0 = "
                 "all)")
  p.add_argument("--si-snr-utterances", type=int, default=32, help="validation utterances "
                 "Griffin-Lim inverts for SI-SNR (default 32; 0 = skip)")
  p.add_argument("--out", default="audio_report", help="directory for report.md, "
                 "report.json, report.png and runs/ (default audio_report)")
  p.set_defaults(func=_cmd_audio_report, parser=p, strict=True)

  p = _sub(sub, "needle", "needle threading (Roberts et al.): exact match of a trained LM "
           "run on key-value haystacks over context length x needle depth and x hops "
           "(single needle, threading, multi-threading); a table, needle.json and a heat map",
           "tokenlab needle --run RUN --lengths 32,64,128 --per-cell 16")
  p.add_argument("--run", required=True, help="a workdir written by `tokenlab train` (a "
                 "next-token LM, e.g. transformer_lm or needle_threading)")
  p.add_argument("--lengths", default="", help="context lengths in tokens, comma-separated "
                 "(default: the run's seq_len / 4, / 2 and itself)")
  p.add_argument("--per-cell", type=int, default=32, help="haystacks per cell (default 32)")
  p.add_argument("--hops", type=int, default=3, help="thread lengths 1..HOPS (default 3)")
  p.add_argument("--key-len", type=int, default=1, help="characters per key (default 1)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--out", default="", help="output directory (default RUN/needle)")
  p.set_defaults(func=_cmd_needle, parser=p, strict=True)

  for name, help_, func in (
      ("data", "build, list and show the embedded datasets (`tokenlab data --help`)",
       _cmd_data),
      ("plan", "compile a config ahead of time for N devices and report per-device memory "
       "and whether it fits a chip (`tokenlab plan --help`)", _cmd_plan),
      ("scale", "run a scaling study (sweeps of mesh / size) into CSV + PNG "
       "(`tokenlab scale --help`)", _cmd_scale),
      ("repro", "run a paper method's mini-reproduction: table, verdict, repro.md, PNGs "
       "(`tokenlab repro --help`)", _cmd_repro),
      ("grow", "grow a trained TokenFormer run (more parameter tokens) and train it "
       "(`tokenlab grow --help`)", _cmd_grow)):
    sub.add_parser(name, help=help_, add_help=False).set_defaults(func=func)

  p = sub.add_parser("bench", help="run a benchmark against its named peer and print ratios "
                     "(`tokenlab bench --help`)", add_help=False)
  p.add_argument("name", nargs="?", help="benchmark name; omit to list them")
  p.set_defaults(func=_cmd_bench, parser=p)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  _skip_absent_tpu()
  try:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    if argv and argv[0] in ("train", "eval", "sample", "plot"):
      commands[argv[0]].check_flags(argv[1:], overrides=argv[0] == "train")
    args, rest = parser.parse_known_args(argv)
    if rest and getattr(args, "strict", False):
      args.parser.reject(rest)
    _quiet_logs()
    return int(args.func(args, rest) or 0)
  except TokenlabError as e:
    print(f"tokenlab: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("tokenlab: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
