"""Reading headed CSV files into typed columns, with file:line errors.

Contract: `read_csv(path, required, optional)` returns a `Table` of string
columns and the 1-based line number of every row (the header is line 1), or
raises `InputError` for a missing or empty file, a missing column (named), a
row with the wrong number of fields or undecodable bytes. `int_column` /
`float_column` convert a column with numpy in one call and, only when that
fails, scan for the first bad value to report its line; `ids_column` gives
stripped id strings, an empty one reported by its line.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Sequence

import numpy as np

from data.errors import InputError


@dataclasses.dataclass(frozen=True)
class Table:
  """String columns of a CSV file.

  Attributes:
    path: the file read.
    header: column names in file order.
    columns: name -> list of `R` raw string values (required and present
      optional columns only).
    lines: int64 `[R]` 1-based line number of each row.
  """

  path: str
  header: tuple[str, ...]
  columns: dict[str, list[str]]
  lines: np.ndarray

  @property
  def num_rows(self) -> int:
    return int(self.lines.shape[0])

  def has(self, name: str) -> bool:
    return name in self.columns


def check_file(path: str | os.PathLike) -> str:
  """Returns `path` as str; raises InputError when it is not a readable file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(path, None, "file not found.")
  return path


def read_csv(path: str | os.PathLike, required: Sequence[str],
             optional: Sequence[str] = (), keep_all: bool = False) -> Table:
  """Reads a comma-separated file with a header line.

  Args:
    path: the file.
    required: columns that must be in the header.
    optional: columns kept when present.
    keep_all: keep every column of the file (in header order).

  Returns:
    A `Table` with the required and present optional columns (or all).

  Raises:
    InputError: file missing or empty, a required column missing, a row with
      a different number of fields than the header, or non-UTF-8 bytes.
  """
  path = check_file(path)
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    try:
      try:
        header = tuple(name.strip() for name in next(reader))
      except StopIteration:
        raise InputError(path, None, "file is empty; expected a header line "
                         f"{','.join(required)}.") from None
      missing = [name for name in required if name not in header]
      if missing:
        raise InputError(path, 1, f"missing column {missing[0]!r} (header is "
                         f"{','.join(header)}; expected {','.join(required)}).")
      duplicated = sorted({name for name in header if header.count(name) > 1})
      if duplicated:
        raise InputError(path, 1, f"column {duplicated[0]!r} appears twice in the header.")
      keep = list(header) if keep_all else [
          name for name in (*required, *optional) if name in header]
      positions = [header.index(name) for name in keep]
      values: list[list[str]] = [[] for _ in keep]
      lines = []
      width = len(header)
      for row in reader:
        if not row:
          continue  # Blank line (e.g. a trailing newline pair).
        if len(row) != width:
          raise InputError(path, reader.line_num,
                           f"expected {width} fields ({','.join(header)}), got {len(row)}.")
        for out, position in zip(values, positions):
          out.append(row[position])
        lines.append(reader.line_num)
    except UnicodeDecodeError as e:
      raise InputError(path, reader.line_num + 1, f"not UTF-8 text ({e.reason}).") from None
    except csv.Error as e:
      raise InputError(path, reader.line_num, f"malformed CSV ({e}).") from None
  if not lines:
    raise InputError(path, None, "file has a header but no data rows.")
  return Table(path=path, header=header, columns=dict(zip(keep, values)),
               lines=np.asarray(lines, dtype=np.int64))


def int_column(table: Table, name: str) -> np.ndarray:
  """Column `name` as int64 `[R]`; InputError at the first non-integer."""
  raw = table.columns[name]
  try:
    return np.asarray(raw, dtype=np.int64)
  except (ValueError, OverflowError):
    pass
  for value, line in zip(raw, table.lines.tolist()):
    try:
      number = int(value)
    except ValueError:
      raise InputError(table.path, line,
                       f"column {name!r}: {value!r} is not an integer.") from None
    if not -2**63 <= number < 2**63:
      raise InputError(table.path, line, f"column {name!r}: {value!r} is out of the int64 range.")
  raise AssertionError("unreachable: numpy and int() disagree")  # pragma: no cover


def float_column(table: Table, name: str) -> np.ndarray:
  """Column `name` as float64 `[R]`; InputError at the first non-finite number."""
  raw = table.columns[name]
  try:
    out = np.asarray(raw, dtype=np.float64)
  except ValueError:
    out = None
  if out is not None and np.all(np.isfinite(out)):
    return out
  for value, line in zip(raw, table.lines.tolist()):
    try:
      number = float(value)
    except ValueError:
      number = float("nan")
    if not np.isfinite(number):
      raise InputError(table.path, line,
                       f"column {name!r}: {value!r} is not a finite number.")
  raise AssertionError("unreachable: numpy and float() disagree")  # pragma: no cover


def ids_column(table: Table, name: str) -> np.ndarray:
  """Column `name` of `table` as stripped id strings; an empty id is an error.

  Raises:
    InputError: naming the file and line of the first empty value.
  """
  values = np.asarray([v.strip() for v in table.columns[name]], dtype=str)
  empty = np.flatnonzero(values == "")
  if empty.size:
    raise InputError(table.path, int(table.lines[empty[0]]), f"empty {name}.")
  return values
