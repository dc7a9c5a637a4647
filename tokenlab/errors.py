"""User-facing errors.

Every error a user can fix (a bad config key, a shape that does not fit the mesh, an unknown
dataset, a checkpoint from another model) is raised as a :class:`TokenlabError` whose message
names the problem and the fix in one line. The CLI prints such errors without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TokenlabError(Exception):
  """An error the user can fix; its message says how."""


class ConfigError(TokenlabError):
  """A bad experiment config: unknown key, wrong type, inconsistent sizes."""


def nearest(name: str, candidates: Iterable[str]) -> str:
  """Returns ' (did you mean X?)' for the closest candidate to `name`, or ''."""
  match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
  return f" (did you mean '{match[0]}'?)" if match else ""
