"""The error every data adapter raises for bad input files.

Contract: any problem with a raw input (missing file or column, a value that
does not parse, an id that refers to nothing, a split that would be empty) is
reported as an `InputError` whose message starts with `path:line:` (1-based
line number, counting the header as line 1) or `path:` when the problem is not
on one line. `data.prepare` turns it into exit code 2 and a one-line message,
and nothing is written.
"""

from __future__ import annotations

import os


class InputError(ValueError):
  """Bad raw input, located by file and (1-based) line.

  Attributes:
    path: the input file.
    line: 1-based line number (the header is line 1), or None when the problem
      concerns the whole file.
    what: what is wrong, phrased so the user knows how to fix it.
  """

  def __init__(self, path: str | os.PathLike, line: int | None, what: str):
    self.path = os.fspath(path)
    self.line = None if line is None else int(line)
    self.what = what
    where = self.path if self.line is None else f"{self.path}:{self.line}"
    super().__init__(f"{where}: {what}")

  def __reduce__(self):
    # Keeps the exception picklable across processes (e.g. Beam workers).
    return (InputError, (self.path, self.line, self.what))
