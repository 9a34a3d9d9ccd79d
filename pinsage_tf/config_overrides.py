"""Dotted `section.field=value` overrides of frozen dataclass configs.

The one override mechanism of the configs, in the manner of Model Garden's
`--params_override` and TF-GNN's dotted config flags: `python -m trainer.train
--set=train.epochs=3` and Python callers (`ExperimentConfig.with_overrides`)
both go through `parse` and `apply`.

* A key is a path of field names through nested dataclasses
  (`model.encoder.use_id_embedding`); it ends at a field that is not itself a
  dataclass. Every such field of the config can be set.
* A value is text, parsed by the field's type annotation: `bool` takes
  `true`/`false`/`1`/`0` (any case), `int`, `float` and `str` the usual
  literals, `X | None` also `none`/`null`; other types (tuples) take JSON,
  lists becoming tuples (`[["genre", 20]]`).
* What the type cannot say (ranges, the allowed strings of enum-like fields,
  couplings between fields) is checked by the dataclasses' own
  `__post_init__`; `apply` re-raises its error prefixed with the overrides
  that built the rejected dataclass.

Every error is a one-line `ValueError` naming the key; an unknown key also
lists the valid keys of its section (`hidden_dim, encoder.*, ...`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

Config = TypeVar("Config")

_TRUE = ("true", "1")
_FALSE = ("false", "0")
_NONE = ("none", "null")


def _field_types(cls: type) -> dict[str, Any]:
  """Field name -> resolved type annotation of the dataclass `cls`."""
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_section(tp: Any) -> bool:
  return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def valid_keys(cls: type) -> list[str]:
  """The field names of the dataclass `cls`, nested sections shown as `name.*`."""
  return sorted(f"{name}.*" if _is_section(tp) else name
                for name, tp in _field_types(cls).items())


def _resolve(cls: type, key: str) -> Any:
  """The type annotation of the field at dotted `key` below `cls`."""
  tp: Any = cls
  parts = key.split(".")
  for depth, name in enumerate(parts):
    section = ".".join(parts[:depth])
    fields = _field_types(tp)
    if name not in fields:
      where = f"{section} has" if section else "valid top-level keys are"
      raise ValueError(f"unknown key {key!r}: {where} {', '.join(valid_keys(tp))}.")
    tp = fields[name]
    if depth + 1 < len(parts) and not _is_section(tp):
      raise ValueError(f"unknown key {key!r}: {'.'.join(parts[:depth + 1])} is a field, "
                       "not a section.")
  if _is_section(tp):
    raise ValueError(f"{key} is a section, not a field; set one of its fields: "
                     f"{', '.join(f'{key}.{k}' for k in valid_keys(tp))}.")
  return tp


def _describe(tp: Any) -> str:
  if tp is bool:
    return "true/false/1/0"
  if tp is int:
    return "an int"
  if tp is float:
    return "a float"
  if tp is str:
    return "a string"
  return f"JSON for {tp}"


def _to_tuples(value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_to_tuples(v) for v in value)
  return value


def parse_value(tp: Any, text: str) -> Any:
  """`text` parsed as a value of the type annotation `tp`; ValueError if it is not one."""
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    options = [t for t in typing.get_args(tp) if t is not type(None)]
    if len(options) < len(typing.get_args(tp)) and text.strip().lower() in _NONE:
      return None
    for option in options:
      try:
        return parse_value(option, text)
      except ValueError:
        pass
    expected = " or ".join([_describe(t) for t in options] +
                           (["none"] if len(options) < len(typing.get_args(tp)) else []))
    raise ValueError(f"expected {expected}, got {text!r}")
  if tp is bool:
    lowered = text.strip().lower()
    if lowered in _TRUE + _FALSE:
      return lowered in _TRUE
  elif tp is int:
    try:
      return int(text)
    except ValueError:
      pass
  elif tp is float:
    try:
      return float(text)
    except ValueError:
      pass
  elif tp is str:
    return text
  else:
    try:
      return _to_tuples(json.loads(text))
    except json.JSONDecodeError:
      pass
  raise ValueError(f"expected {_describe(tp)}, got {text!r}")


def parse(cls: type, overrides: Iterable[str]) -> dict[str, Any]:
  """`["a.b=v", ...]` -> `{"a.b": v parsed by its field's type}` for dataclass `cls`.

  A key given twice keeps its last value (as repeated command-line flags).

  Raises:
    ValueError: (one line) an override without `=`, an unknown key (listing
      the valid keys of its section), a section given as a key, or a value
      its field's type does not accept.
  """
  values: dict[str, Any] = {}
  for override in overrides:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ValueError(f"override {override!r} is not of the form section.field=value.")
    tp = _resolve(cls, key)
    try:
      values[key] = parse_value(tp, text)
    except ValueError as e:
      raise ValueError(f"{key}: {e}.") from None
  return values


def format_value(value: Any) -> str:
  """The override text `parse` reads back as `value`."""
  if value is None:
    return "none"
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (int, float, str)):
    return str(value)
  return json.dumps(value)


class _Section(dict):
  """Changes below one nested dataclass (tells sections from dict values)."""


def apply(config: Config, values: Mapping[str, Any]) -> Config:
  """`config` with the fields at the dotted keys of `values` replaced.

  `values` is typically `parse`'s output. Each changed dataclass is rebuilt
  with `dataclasses.replace`, so its `__post_init__` validates the result.

  Raises:
    ValueError: a dataclass rejected its new values; the message starts with
      the overrides below that dataclass (`train.loss=..., train.margin=...:`).
  """
  tree = _Section()
  for key, value in values.items():
    node = tree
    *path, last = key.split(".")
    for name in path:
      node = node.setdefault(name, _Section())
    node[last] = value
  return _replace(config, tree, "")


def _replace(config: Any, changes: _Section, prefix: str) -> Any:
  kwargs = {name: _replace(getattr(config, name), change, f"{prefix}{name}.")
            if isinstance(change, _Section) else change
            for name, change in changes.items()}
  try:
    return dataclasses.replace(config, **kwargs)
  except (ValueError, TypeError) as e:
    given = ", ".join(f"{k}={format_value(v)}" for k, v in _flatten(changes, prefix))
    raise ValueError(f"{given}: {e}") from None


def _flatten(changes: _Section, prefix: str) -> Iterable[tuple[str, Any]]:
  for name, change in changes.items():
    if isinstance(change, _Section):
      yield from _flatten(change, f"{prefix}{name}.")
    else:
      yield f"{prefix}{name}", change
