"""One argument parser for every `tokenlab` command: strict, one-line errors, one flag style.

- Flags are spelled with dashes (`--top-k`); the underscore spelling (`--top_k`) is accepted
  as an alias, for every flag of every subcommand.
- An unknown flag is an error naming the nearest valid flag, never silently ignored.
- Errors raise :class:`tokenlab.errors.TokenlabError`, which the CLI prints as one line on
  stderr with exit status 2 (argparse's own errors print a usage block).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tokenlab.errors import TokenlabError, nearest


def canonical_flag(word: str) -> str:
  """'--top_k=3' -> '--top-k=3'; config overrides and non-flags are left alone."""
  if not word.startswith("--") or word.startswith("--config.") or word == "--":
    return word
  flag, eq, value = word.partition("=")
  # A leading underscore marks an internal flag (e.g. '--_child'): left as written.
  return flag[:3] + flag[3:].replace("_", "-") + eq + value


class Parser(argparse.ArgumentParser):
  """argparse.ArgumentParser with the rules above. `passthrough=True` keeps words it does not
  know for a caller that parses them next (e.g. `--config.a.b=value` overrides)."""

  def __init__(self, *args, passthrough: bool = False, **kwargs):
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    kwargs.setdefault("allow_abbrev", False)   # '--temp' must not silently mean '--temperature' 
    super().__init__(*args, **kwargs)
    self.passthrough = passthrough

  def add_argument(self, *names, **kwargs):
    # argparse derives dest from the first long flag ('--top-k' -> top_k), as before.
    names = tuple(n.replace("_", "-") if n.startswith("--") else n for n in names)
    return super().add_argument(*names, **kwargs)

  def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
    args = list(sys.argv[1:] if args is None else args)
    return super().parse_known_args([canonical_flag(a) for a in args], namespace)

  def check_flags(self, words: Sequence[str], overrides: bool = False) -> None:
    """Refuses the first '--flag' in `words` this parser does not know (before argparse would
    complain about something else, e.g. a required flag the misspelling was meant to be)."""
    known = set(self._option_string_actions)
    for word in words:
      if word == "--":
        return
      flag = canonical_flag(word).split("=")[0]
      if flag.startswith("--") and flag not in known and not (
          overrides and flag.startswith("--config.")):
        self.reject([word])

  def parse_args(self, args: Sequence[str] | None = None, namespace=None):
    args = list(sys.argv[1:] if args is None else args)
    if not self._subparsers:
      self.check_flags(args)
    parsed, rest = self.parse_known_args(args, namespace)
    if rest and not self.passthrough:
      self.chosen(parsed).reject(rest)
    return parsed

  def chosen(self, parsed: argparse.Namespace) -> "Parser":
    """The subcommand's parser that `parsed` went through (self if none)."""
    if not self._subparsers:
      return self
    action = self._subparsers._group_actions[0]
    return action.choices.get(getattr(parsed, action.dest, None), self)

  def parse_with_overrides(self, args: Sequence[str] | None = None
                           ) -> tuple[argparse.Namespace, list[str]]:
    """(flags, ['--config.a.b=value', ...]) for a command that takes config overrides."""
    args = list(sys.argv[1:] if args is None else args)
    self.check_flags(args, overrides=True)
    parsed, rest = self.parse_known_args(args)
    return parsed, self.overrides(rest)

  def overrides(self, rest: Sequence[str]) -> list[str]:
    """Words this parser did not take -> config overrides ('--config.a.b=value' or
    '--config.a.b value'); anything else is refused naming the nearest valid flag."""
    from tokenlab.config import split_overrides
    words, i = [], 0
    while i < len(rest):
      word = rest[i]
      if not word.startswith("--config."):
        self.reject([word])
      words.append(word)
      if "=" not in word and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
        words.append(rest[i + 1])
        i += 1
      i += 1
    return split_overrides(words)

  def reject(self, rest: Sequence[str]) -> None:
    """Raises a one-line error for the first word in `rest` this parser does not take."""
    word = rest[0]
    flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
    if word.startswith("-"):
      hint = nearest(word.split("=")[0], flags)
      raise TokenlabError(f"unknown flag '{word}' for `{self.prog}`{hint}; "
                          f"see `{self.prog} --help`")
    raise TokenlabError(f"unexpected argument '{word}' for `{self.prog}`; "
                        f"see `{self.prog} --help`")

  def error(self, message: str):
    raise TokenlabError(f"{self.prog}: {message}; see `{self.prog} --help`")
