"""The `tokenlab` command: train | eval | sample | plot | data | plan | scale | repro |
bench | grow.

  tokenlab train --config experiments/transformer_lm.py:size=tiny --workdir runs/x \\
      --config.optimizer.lr=3e-4
  tokenlab eval --workdir runs/x
  tokenlab sample --workdir runs/x --prompt "def "
  tokenlab plot runs/x
  tokenlab data build pysrc
  tokenlab bench trainer
  tokenlab grow runs/tf --workdir runs/tf_x4 --factor 4     # TokenFormer progressive scaling

User-fixable errors (:class:`tokenlab.errors.TokenlabError`) end with one line on stderr and
exit status 2, never a traceback wall.
"""

from __future__ import annotations

import argparse
import os
import sys

from tokenlab.errors import TokenlabError

DEFAULT_EXPERIMENT = "experiments/hnet.py:size=small"


def resolve_experiment(spec: str) -> str:
  """Finds experiments/*.py in the working directory or next to the installed package."""
  path, sep, arg = spec.partition(":")
  if not os.path.exists(path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidate = os.path.join(repo, path)
    if os.path.exists(candidate):
      path = candidate
  return path + sep + arg


def _split_overrides(rest: list[str]) -> list[str]:
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      raise TokenlabError(f"unrecognised argument '{item}'; overrides look like "
                          f"--config.train.steps=100")
    overrides.append(item)
  return overrides


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
  config = load_config(resolve_experiment(args.config), _split_overrides(rest))
  result = train(config, args.workdir)
  import jax
  if jax.process_index() == 0:
    keys = [k for k in sorted(result) if k.startswith(("eval/", "train/loss", "perf/"))]
    print("final: " + ", ".join(f"{k}={result[k]:.4g}" for k in keys
                                if isinstance(result[k], float)))
    print(f"workdir: {args.workdir} (metrics.jsonl, tb/, checkpoints/; "
          f"`tokenlab plot {args.workdir}` for curves)")
  return 0


def _first_batch(config, split: str, batch_size: int):
  from tokenlab import data as data_lib
  it = data_lib.make_iterator(config.data, split=split, batch_size=batch_size, seed=config.seed,
                              shuffle=False, num_epochs=1)
  return next(iter(it))


def _cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
  import jax
  import flax.linen as nn
  from tokenlab import data as data_lib
  from tokenlab.train.inference import load_config_from_workdir, load_trained
  from tokenlab.train.metrics import reduce_metrics
  from tokenlab.train.partitioning import batch_sharding
  from tokenlab.train.step import make_eval_step
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
      batch = {k: jax.device_put(v, batch_sharding(run.mesh, run.rules, v.ndim))
               for k, v in batch.items()}
      results.append(eval_step(run.params, batch, jax.random.key(0)))
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
  config = load_config_from_workdir(args.workdir)
  run = load_trained(args.workdir, _first_batch(config, "validation", 1), args.step)
  if not hasattr(run.method, "sample"):
    raise TokenlabError(f"method '{config.model.name}' has no sampler")
  tok = tokenizers.get_tokenizer(config.data)
  prompt = np.asarray(tok.encode(args.prompt.encode("utf-8")), np.int32)
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


def _cmd_plot(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab.plotting import plot_workdir
  for path in plot_workdir(args.workdir):
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


def _cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab import bench
  if args.name is None:
    print("available benchmarks: " + ", ".join(bench.available()))
    return 0
  return bench.run(args.name, rest)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="tokenlab", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("train", help="train (or resume) an experiment in a workdir")
  p.add_argument("--config", default=DEFAULT_EXPERIMENT,
                 help=f"experiment file[:arg] (default {DEFAULT_EXPERIMENT})")
  p.add_argument("--workdir", default="runs/default")
  p.set_defaults(func=_cmd_train)

  p = sub.add_parser("eval", help="evaluate the latest checkpoint of a workdir")
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default="validation")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--batches", type=int, default=0, help="0 = the whole split")
  p.set_defaults(func=_cmd_eval)

  p = sub.add_parser("sample", help="generate from a trained generative method")
  p.add_argument("--workdir", required=True)
  p.add_argument("--prompt", default="def ")
  p.add_argument("--num", type=int, default=2)
  p.add_argument("--length", type=int, default=0, help="total tokens (default seq_len)")
  p.add_argument("--temperature", type=float, default=0.8)
  p.add_argument("--top_k", type=int, default=0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--step", type=int, default=None)
  p.set_defaults(func=_cmd_sample)

  p = sub.add_parser("plot", help="write PNG curves of a workdir's metrics")
  p.add_argument("workdir")
  p.set_defaults(func=_cmd_plot)

  p = sub.add_parser("data", help="build / list / show embedded datasets", add_help=False)
  p.set_defaults(func=_cmd_data)

  p = sub.add_parser("plan", help="compile a config ahead of time for N devices and report "
                     "per-device memory and whether it fits a chip", add_help=False)
  p.set_defaults(func=_cmd_plan)

  p = sub.add_parser("scale", help="run a scaling study (sweeps of mesh / size) into CSV + PNG",
                     add_help=False)
  p.set_defaults(func=_cmd_scale)

  p = sub.add_parser("repro", help="run a paper method's mini-reproduction (table, repro.md, "
                     "PNG)", add_help=False)
  p.set_defaults(func=_cmd_repro)

  p = sub.add_parser("grow", help="grow a trained TokenFormer run (more parameter tokens) "
                     "and train the grown model", add_help=False)
  p.set_defaults(func=_cmd_grow)

  p = sub.add_parser("bench", help="run a benchmark against its named peer and print ratios",
                     add_help=False)
  p.add_argument("name", nargs="?", help="benchmark name; omit to list them")
  p.set_defaults(func=_cmd_bench)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  _quiet_logs()
  try:
    return int(args.func(args, rest) or 0)
  except TokenlabError as e:
    print(f"tokenlab: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("tokenlab: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
