"""`tokenlab data list | build NAME | show NAME`: inspect and build the embedded datasets."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from tokenlab.argparsing import Parser
from tokenlab.data import config, registry
from tokenlab.errors import ConfigError, TokenlabError, nearest


def _parse_options(name: str, pairs: list[str]) -> dict[str, Any]:
  """Parses ['k=v', ...] into typed builder options (types from the defaults)."""
  defaults = registry.DATASETS[name].default_options
  out = {}
  for pair in pairs:
    if "=" not in pair:
      raise ConfigError(f"--option {pair!r} must look like KEY=VALUE, e.g. --option k=8")
    key, value = pair.split("=", 1)
    if key not in defaults:
      raise ConfigError(f"unknown option '{key}' for dataset '{name}'{nearest(key, defaults)}; "
                        f"valid options: {', '.join(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"--option {key}={value} must be true or false")
      out[key] = value.lower() in ("true", "1")
      continue
    try:
      out[key] = kind(value)
    except ValueError:
      raise ConfigError(f"--option {key}={value} must be a {kind.__name__}") from None
  return out


def _data_cfg(args: argparse.Namespace) -> dict[str, Any]:
  if args.name not in registry.DATASETS:
    config.default_data_config(args.name)  # Raises the 'unknown dataset' error.
  cfg = config.default_data_config(args.name).to_dict()
  cfg["options"].update(_parse_options(args.name, args.option))
  cfg["data_dir"] = args.data_dir
  if getattr(args, "tokenizer", None):
    cfg["tokenizer"] = args.tokenizer
    cfg["vocab_size"] = args.vocab_size or (256 if args.tokenizer == "bytes" else 512)
  return config.resolve(cfg)


def _dir_bytes(path) -> int:
  return sum(p.stat().length for p in path.iterdir() if p.is_file())


def _unigram_entropy_bits(docs: list[bytes]) -> float:
  counts = np.bincount(np.frombuffer(b"".join(docs), np.uint8), minlength=256)
  prob = counts[counts > 0] / counts.sum()
  return float(-(prob * np.log2(prob)).sum())


def _cmd_list(args: argparse.Namespace) -> int:
  del args
  for spec in registry.DATASETS.values():
    opts = ", ".join(f"{k}={v}" for k, v in spec.default_options.items())
    print(f"{spec.name:8s} {spec.kind:5s} {spec.description}\n{'':14s} options: {opts}")
  return 0


def _cmd_build(args: argparse.Namespace) -> int:
  from tokenlab.data import sources  # pylint: disable=g-import-not-at-top
  cfg = _data_cfg(args)
  builder = sources.builder(cfg)
  module = registry.DATASETS[cfg["name"]].load()
  print(f"{cfg['name']}: {builder.data_dir}")
  print(f"  options: {cfg['options']}")
  print(f"  on disk: {_dir_bytes(builder.data_path) / 1e6:.2f} MB")
  for split in ("train", "validation"):
    src = builder.as_data_source(split=split)
    line = f"  {split}: {len(src)} records"
    if registry.DATASETS[cfg["name"]].kind == "text":
      document = sources.document_fn(cfg)
      docs = [bytes(document(src[i])) for i in range(len(src))]
      line += (f", {sum(map(len, docs))} bytes, unigram entropy "
               f"{_unigram_entropy_bits(docs):.4f} bits/byte")
    print(line)
  for key, value in module.stats(cfg["options"]).items():
    print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
  return 0


def _ascii_image(image: np.ndarray) -> str:
  shades = " .:-=+*#%@"
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / 255.0
  rows = [("".join(shades[min(int(v * 10), 9)] for v in row)) for row in image.mean(-1)]
  return "\n".join("    " + r for r in rows)


def _cmd_show(args: argparse.Namespace) -> int:
  from tokenlab.data import sources, tokenizers  # pylint: disable=g-import-not-at-top
  cfg = _data_cfg(args)
  src = sources.data_source(cfg, args.split)
  spec = registry.DATASETS[cfg["name"]]
  module = spec.load()
  tok = tokenizers.get_tokenizer(cfg) if spec.kind == "text" else None
  if args.out and spec.kind != "video":
    raise ConfigError(f"--out writes video clips; '{cfg['name']}' is {spec.kind} data "
                      "(drop --out, or show moving_digits, moving_shapes or pulse)")
  clips = []
  for i in range(min(args.num, len(src))):
    record = src[i]
    if spec.kind == "video":
      clip = np.asarray(record["video"])
      clips.append(clip)
      print(f"[{args.split} {i}] video {clip.shape} {clip.dtype}; {module.describe(record)}")
      print(f"  frames 0 and {len(clip) - 1}:")
      gap = np.full((clip.shape[1], 1, clip.shape[3]), 128, clip.dtype)  # a grey column
      pair = np.concatenate([clip[0], gap, clip[-1]], axis=1)
      every = -(-pair.shape[1] // 64)  # At most 64 characters wide.
      print(_ascii_image(pair[::every, ::every]))
      continue
    if spec.kind == "audio":
      print(f"[{args.split} {i}] {module.describe(record, cfg['options'])}")
      continue
    if spec.kind == "image":
      print(f"[{args.split} {i}] label {int(record['label'])}")
      print(_ascii_image(np.asarray(record["image"])))
      continue
    doc = bytes(sources.document_fn(cfg)(record))[:args.max_bytes]
    ids = tok.encode(doc)
    pieces = "|".join(tok.token_bytes(int(t)).decode("utf-8", "replace") for t in ids)
    print(f"[{args.split} {i}] {len(doc)} bytes shown, {len(ids)} {cfg['tokenizer']} tokens")
    print(f"  text:   {doc.decode('utf-8', 'replace')!r}")
    print(f"  tokens: {pieces!r}")
    if hasattr(module, "byte_labels"):
      labels = module.byte_labels(record)[:len(doc)]
      print(f"  labels: {''.join(str(int(v)) for v in labels)}")
  if args.out:
    from tokenlab.evals import video  # pylint: disable=g-import-not-at-top
    save = video.save_video_gif if args.out.endswith(".gif") else video.save_video_strip
    print(f"wrote {save(np.stack(clips), args.out)}")
  return 0


def build_parser() -> Parser:
  """Returns the parser of `tokenlab data ...`."""
  parser = Parser(prog="tokenlab data", description=__doc__.splitlines()[0],
                  epilog="examples:\n  tokenlab data list\n  tokenlab data show pysrc --num 2\n")
  sub = parser.add_subparsers(dest="action", required=True)
  sub.add_parser("list", help="list the embedded datasets and their options"
                 ).set_defaults(func=_cmd_list)
  for action, func, help_ in (("build", _cmd_build, "build a dataset, print path and stats"),
                              ("show", _cmd_show, "print a few decoded examples")):
    p = sub.add_parser(action, help=help_)
    p.add_argument("name", help="dataset name (see `tokenlab data list`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option, repeatable (e.g. --option k=8)")
    p.add_argument("--data-dir", default="", help="data dir ('' = $TOKENLAB_DATA_DIR or "
                   "~/.cache/tokenlab/tfds)")
    p.set_defaults(func=func)
    if action == "show":
      p.add_argument("--split", default="train", choices=("train", "validation"))
      p.add_argument("--num", type=int, default=3, help="examples to show")
      p.add_argument("--max-bytes", type=int, default=200, help="bytes shown per example")
      p.add_argument("--tokenizer", default="bytes", choices=registry.TOKENIZERS)
      p.add_argument("--vocab-size", type=int, default=0,
                     help="vocabulary of a trained tokenizer (default 512)")
      p.add_argument("--out", default="", help="video data: write the clips shown as a PNG "
                     "strip (one row of frames per clip), or a GIF if it ends in .gif")
  return parser


def main(argv: list[str]) -> int:
  """Runs `tokenlab data ARGV...`; returns the exit status (2 on a user error)."""
  args = build_parser().parse_args(argv)
  try:
    return int(args.func(args) or 0)
  except TokenlabError as e:
    print(f"tokenlab data: error: {e}", file=sys.stderr, flush=True)
    return 2


