"""A run's config as YAML: reading (``load_config``), dotted overrides,
writing (``save_config``) and the key list of ``jaxrl-train --help``.

The schema, the dataclasses and their checks, is ``jaxrl.config``; every
mistake in a file or an override is a ``ConfigError`` whose message is one
line naming the file or the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import inspect
import json
import os
from pathlib import Path
import re
import textwrap
import types
import typing
from typing import Any

import yaml

from jaxrl.atomic_file import replaced_atomically
from jaxrl.config import ConfigError, RunConfig, _build, _field_hint, _hints, _mismatch


# YAML as users expect it (YAML 1.2 scalars): ``1e-3`` is a float and only
# true/false are booleans (``yes``, ``on``, ``no`` stay strings).
_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
  """``yaml.SafeLoader`` with YAML 1.2 scalars that rejects duplicate keys."""

  def construct_mapping(self, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
      if key_node.tag == "tag:yaml.org,2002:merge":
        continue
      key = self.construct_object(key_node, deep=True)
      if not isinstance(key, typing.Hashable):
        continue  # super() reports it.
      if key in seen:
        raise yaml.constructor.ConstructorError(
            "while constructing a mapping", node.start_mark,
            f"found duplicate key {key!r}", key_node.start_mark)
      seen.add(key)
    return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789"))


class _Dumper(yaml.SafeDumper):
  """``yaml.SafeDumper`` that quotes every string ``_Loader`` reads as non-string."""


_Dumper.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789"))


def _yaml_problem(error: yaml.YAMLError) -> str:
  """One line locating a YAML error."""
  mark = getattr(error, "problem_mark", None)
  if mark is None:
    return " ".join(str(error).split())
  return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem or error.context}"


def config_from_dict(tree: Mapping[str, Any]) -> RunConfig:
  """The ``RunConfig`` described by nested plain data; missing keys keep defaults."""
  return _build(RunConfig, tree, "")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
  """``cfg`` as nested plain YAML data (tuples become lists)."""

  def plain(x):
    if isinstance(x, Mapping):
      return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [plain(v) for v in x]
    return x

  return plain(dataclasses.asdict(cfg))


def _override(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
  """Sets each ``dotted.key=value`` of ``overrides`` in ``tree``, in place."""
  for text in overrides:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[^\s.]+(?:\.[^\s.]+)*", key):
      raise ConfigError(f"bad override {text!r} (expected key=value)")
    path = key.split(".")
    try:
      value = yaml.load(raw, _Loader)
    except yaml.YAMLError as e:
      raise ConfigError(f"bad override {text!r}: invalid YAML value, {_yaml_problem(e)}") from None
    hint = RunConfig
    for depth, part in enumerate(path):  # Check the key against the schema.
      if dataclasses.is_dataclass(hint):
        hint = _field_hint(hint, part, ".".join(path[:depth + 1]))
      elif hint is dict or typing.get_origin(hint) is dict or hint is Any:
        hint = Any
      else:
        raise ConfigError(f"{key}: unknown key ({'.'.join(path[:depth])} is not a section)")
    node = tree
    for depth, part in enumerate(path[:-1]):
      if node.get(part) is None:
        node[part] = {}
      node = node[part]
      if not isinstance(node, dict):
        raise _mismatch(".".join(path[:depth + 1]), "a mapping", node, nullable=False)
    node[path[-1]] = value
  return tree


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"   # the configs that travel with the package


def shipped_configs() -> dict[str, str]:
  """The shipped configs' names (``cartpole_dqn``, ...), sorted, each with
  its description: the first comment line of its file."""
  configs = {}
  for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
    with open(path, encoding="utf-8") as f:
      comments = (line[1:].strip() for line in f if line.startswith("#"))
      configs[path.stem] = next(comments, "")
  return configs


def find_config(name_or_path: str | os.PathLike) -> Path:
  """The config file ``name_or_path`` names: a file that exists, else the
  shipped config of that name (``cartpole_dqn`` or ``cartpole_dqn.yaml``).

  Raises:
    ConfigError: neither (one line, listing the shipped names).
  """
  path = Path(name_or_path)
  if path.is_file():
    return path
  shipped = SHIPPED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
  if path.parent == Path(".") and shipped.is_file():
    return shipped
  raise ConfigError(f"{name_or_path}: no such config file, and not a shipped config "
                    f"(jaxrl-train --list-configs: {', '.join(shipped_configs())})")


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
  """The ``RunConfig`` of a YAML file (None = all defaults) with ``overrides``.

  Each override is ``dotted.key=value`` with a YAML value (``agent.learning_rate=1e-3``,
  ``agent.hidden_sizes=[64,64]``, ``env.kwargs.max_episode_steps=200``,
  ``seed=3``); they are applied in order, before validation.

  Raises:
    ConfigError: one line naming the file or the key at fault.
  """
  tree = {}
  if path is not None:
    try:
      with open(path, encoding="utf-8") as f:
        tree = yaml.load(f, _Loader)
    except OSError as e:
      raise ConfigError(f"{os.fspath(path)}: cannot read config ({e.strerror})") from None
    except UnicodeDecodeError:
      raise ConfigError(f"{os.fspath(path)}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
      raise ConfigError(f"{os.fspath(path)}: invalid YAML, {_yaml_problem(e)}") from None
    if tree is None:
      tree = {}
    if not isinstance(tree, dict):
      raise ConfigError(f"{os.fspath(path)}: expected a mapping of config sections, "
                        f"got {type(tree).__name__}")
  return config_from_dict(_override(tree, overrides))


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
  """``cfg`` with ``dotted.key=value`` overrides applied (as in ``load_config``)."""
  return config_from_dict(_override(config_to_dict(cfg), overrides))


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
  """Writes ``cfg`` as YAML that ``load_config`` reads back equal.

  Atomically: a temporary file beside ``path`` is moved onto it once
  written, so a crash leaves the old file or the new one, never a partial
  one; on error the temporary file is removed.
  """
  with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    yaml.dump(config_to_dict(cfg), f, Dumper=_Dumper, sort_keys=False)


def _describe_fields(describe, prefix: str, cls: type, defaults: dict) -> None:
  """``describe(key, hint, default, doc)`` of every field of ``cls`` (with
  its dotted ``prefix``), the fields of a nested config dataclass included."""
  docs = _field_docs(cls)
  for name, hint in _hints(cls).items():
    if dataclasses.is_dataclass(hint):
      _describe_fields(describe, f"{prefix}.{name}", hint, defaults[name])
    else:
      describe(f"{prefix}.{name}", hint, defaults[name], docs[name])


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
  """Field name -> its description in the ``Attributes:`` section of ``cls``'s docstring."""
  docs = {}
  for line in inspect.cleandoc(cls.__doc__).partition("\nAttributes:\n")[2].splitlines():
    entry = re.fullmatch(r"  (\w+): (.*)", line)
    if entry:
      name = entry.group(1)
      docs[name] = entry.group(2)
    elif line.startswith("    ") and docs:
      docs[name] += " " + line.strip()
    else:
      break
  return docs


def _type_name(hint: Any) -> str:
  """``hint`` as a user reads it: "int or null", "list of int", "mapping"."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    (inner,) = [a for a in args if a is not type(None)]
    return f"{_type_name(inner)} or null"
  if origin is tuple:
    return f"list of {_type_name(args[0])}"
  if hint is dict or origin is dict:
    return "mapping"
  return hint.__name__


def config_keys_help() -> str:
  """Every key of a ``RunConfig``, grouped by section, with its type, default
  and description (the docstrings'): the key list of ``jaxrl-train --help``."""
  defaults = config_to_dict(RunConfig())
  lines = ["config keys (YAML sections, or dotted.key=value overrides; an integer may be "
           "written 1e5 or 100_000):"]

  def describe(key, hint, default, doc):
    lines.append(f"  {key}: {_type_name(hint)} = {json.dumps(default)}")
    lines.extend(textwrap.wrap(doc.replace("``", ""), 88, initial_indent=" " * 6,
                               subsequent_indent=" " * 6, break_on_hyphens=False))

  scalars = []
  for section, hint in _hints(RunConfig).items():
    if not dataclasses.is_dataclass(hint):
      scalars.append(section)
      continue
    lines += ["", f"{section}: {inspect.cleandoc(hint.__doc__).splitlines()[0]}"]
    _describe_fields(describe, section, hint, defaults[section])
  lines += ["", "top-level keys:"]
  for name in scalars:
    describe(name, _hints(RunConfig)[name], defaults[name], _field_docs(RunConfig)[name])
  return "\n".join(lines)
