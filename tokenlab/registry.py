"""Name -> builder, so experiment configs name methods by string.

A method module `tokenlab/methods/<name>.py` registers its class with `@register_method`;
modules are imported on first use, so a config naming a method pulls in only that method.
"""

from __future__ import annotations

import importlib
import pkgutil

from tokenlab.errors import ConfigError, nearest

_METHODS: dict[str, type] = {}


def register_method(name: str):
  """Class decorator: makes `config.model.name = name` build this method."""
  def wrap(cls):
    _METHODS[name] = cls
    return cls
  return wrap


def method_names() -> list[str]:
  import tokenlab.methods as pkg
  return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def get_method_class(name: str) -> type:
  if name not in _METHODS:
    names = method_names()
    if name not in names:
      raise ConfigError(f"unknown method config.model.name='{name}'{nearest(name, names)}; "
                        f"known methods: {', '.join(names)}")
    importlib.import_module(f"tokenlab.methods.{name}")
  if name not in _METHODS:
    raise ConfigError(f"module tokenlab.methods.{name} does not register a method named '{name}'")
  return _METHODS[name]


def build_method(model_cfg):
  """Builds the method named by `model_cfg.name` from the rest of `model_cfg`."""
  return get_method_class(model_cfg.name).from_config(model_cfg)
