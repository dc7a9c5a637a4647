"""The `tokenlab` command: train | eval | sample | bench | plot | data.

User-fixable errors (:class:`tokenlab.errors.TokenlabError`) end with one line on stderr and
exit status 2, never a traceback wall.
"""

from __future__ import annotations

import argparse
import sys

from tokenlab.errors import TokenlabError


def _cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
  from tokenlab import bench
  if args.name is None:
    print("available benchmarks: " + ", ".join(bench.available()))
    return 0
  return bench.run(args.name, rest)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="tokenlab", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("bench", help="run a benchmark against its named peer and print ratios")
  p.add_argument("name", nargs="?", help="benchmark name; omit to list them")
  p.set_defaults(func=_cmd_bench)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
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
