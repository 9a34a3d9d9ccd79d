"""Tests for data.errors."""

from __future__ import annotations

import pickle

from data.errors import InputError


def test_message_names_file_and_line():
  e = InputError("/data/ratings.csv", 7, "column 'rating': 'x' is not a finite number.")
  assert str(e) == "/data/ratings.csv:7: column 'rating': 'x' is not a finite number."
  assert (e.path, e.line) == ("/data/ratings.csv", 7)
  assert isinstance(e, ValueError)


def test_without_line_names_only_the_file():
  assert str(InputError("train.txt", None, "file is empty.")) == "train.txt: file is empty."


def test_survives_pickling():
  e = pickle.loads(pickle.dumps(InputError("a.csv", 3, "bad")))
  assert (e.path, e.line, e.what, str(e)) == ("a.csv", 3, "bad", "a.csv:3: bad")
