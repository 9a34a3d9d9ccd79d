"""Tests for data.tables: typed CSV columns with file:line errors."""

from __future__ import annotations

import numpy as np
import pytest

from data import tables
from data.errors import InputError


def _write(tmp_path, text, name="t.csv"):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_reads_columns_and_line_numbers(tmp_path):
  # Line 1 is the header; the blank line 3 is skipped, so rows sit on lines 2 and 4.
  path = _write(tmp_path, 'id,name,extra\n1,"a, b",x\n\n2,c,y\n')
  table = tables.read_csv(path, ["id", "name"], optional=["missing"])
  assert table.header == ("id", "name", "extra")
  assert table.columns == {"id": ["1", "2"], "name": ["a, b", "c"]}
  np.testing.assert_array_equal(table.lines, [2, 4])
  np.testing.assert_array_equal(tables.int_column(table, "id"), [1, 2])


def test_keep_all_keeps_every_column(tmp_path):
  table = tables.read_csv(_write(tmp_path, "id,x,y\n1,2,3\n"), ["id"], keep_all=True)
  assert list(table.columns) == ["id", "x", "y"]


@pytest.mark.parametrize("text,required,message", [
    ("", ["a"], "t.csv: file is empty"),
    ("a,b\n", ["a"], "t.csv: file has a header but no data rows"),
    ("a,c\n1,2\n", ["a", "b"], "t.csv:1: missing column 'b'"),
    ("a,a\n1,2\n", ["a"], "t.csv:1: column 'a' appears twice"),
    ("a,b\n1,2\n3\n", ["a"], "t.csv:3: expected 2 fields"),
])
def test_structural_errors(tmp_path, text, required, message):
  with pytest.raises(InputError, match=message.replace(".", r"\.")):
    tables.read_csv(_write(tmp_path, text), required)


def test_missing_file(tmp_path):
  with pytest.raises(InputError, match="nope.csv: file not found"):
    tables.read_csv(str(tmp_path / "nope.csv"), ["a"])


def test_non_utf8_bytes(tmp_path):
  path = tmp_path / "t.csv"
  path.write_bytes(b"a\n1\n\xff\xfe\n")
  with pytest.raises(InputError, match="not UTF-8"):
    tables.read_csv(str(path), ["a"])


def test_int_column_reports_the_bad_line(tmp_path):
  table = tables.read_csv(_write(tmp_path, "a\n1\n2\n3.5\n"), ["a"])
  with pytest.raises(InputError, match=r"t\.csv:4: column 'a': '3\.5' is not an integer"):
    tables.int_column(table, "a")


def test_int_column_reports_overflow(tmp_path):
  table = tables.read_csv(_write(tmp_path, "a\n1\n99999999999999999999\n"), ["a"])
  with pytest.raises(InputError, match=r"t\.csv:3: .*out of the int64 range"):
    tables.int_column(table, "a")


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", ""])
def test_float_column_reports_the_bad_line(tmp_path, bad):
  table = tables.read_csv(_write(tmp_path, f"a,b\n1.5,x\n{bad},y\n"), ["a"])
  with pytest.raises(InputError, match=r"t\.csv:3: column 'a'"):
    tables.float_column(table, "a")


def test_float_column_parses(tmp_path):
  table = tables.read_csv(_write(tmp_path, "a\n1.5\n-2\n1e3\n"), ["a"])
  np.testing.assert_array_equal(tables.float_column(table, "a"), [1.5, -2.0, 1000.0])
