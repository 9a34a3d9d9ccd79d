"""A graph larger than the process's memory limit opens memory-mapped and can be read.

The limit is RLIMIT_DATA (private writable memory: heap, anonymous mappings),
which is what reading arrays into RAM consumes; read-only file mappings
(`np.load(mmap_mode="r")`) are backed by the page cache and do not count.
RLIMIT_AS would count the mappings' address space too, so it cannot tell the
two apart. Both directions are checked: under the same limit, `mmap=False`
runs out of memory and `mmap=True` reads every byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from pinsage_tf import graph as graph_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: limit the data segment to what is in use now
# plus a margin far below the graph's size, then open the graph.
_CHILD = r"""
import json, resource, sys
import numpy as np
from pinsage_tf import graph as graph_lib

directory, margin, mmap = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
with open("/proc/self/status") as f:
  data_kb = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
limit = data_kb * 1024 + margin
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
try:
  graph = graph_lib.load_graph(directory, mmap=mmap, verify=True)
  dense = graph.features.dense
  total = 0.0
  for start in range(0, dense.shape[0], 256):  # touches every page of the largest file
    total += float(np.asarray(dense[start:start + 256], dtype=np.float64).sum())
  print(json.dumps({"ok": True, "limit": limit, "items": graph.num_items, "sum": total,
                    "memmap": isinstance(dense, np.memmap)}))
except MemoryError:
  print(json.dumps({"ok": False, "limit": limit}))
"""


def _graph_dir(tmp_path, num_items=40_000, dense_dim=1024):
  """A graph whose dense features are `4 num_items dense_dim` bytes (~164 MB)."""
  rng = np.random.default_rng(0)
  dense = np.ones((num_items, dense_dim), dtype=np.float32)
  dense[:, 0] = np.arange(num_items)
  edge_items = np.arange(num_items)
  graph = graph_lib.build_graph(
      name="wide", item_ids=[f"i{i}" for i in range(num_items)], pivot_ids=["p0", "p1"],
      edge_items=edge_items, edge_pivots=rng.integers(2, size=num_items), dense=dense,
      dense_names=[f"f{j}" for j in range(dense_dim)])
  directory = os.path.join(tmp_path, "graph")
  graph_lib.save_graph(graph, directory)
  expected = float(dense.astype(np.float64).sum())
  return directory, expected


def _open_under_limit(directory, margin, mmap):
  env = dict(os.environ, PYTHONPATH=_REPO)
  out = subprocess.run([sys.executable, "-c", _CHILD, directory, str(margin), "1" if mmap else "0"],
                       capture_output=True, text=True, env=env, cwd=_REPO, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_graph_larger_than_the_memory_limit_opens_memory_mapped(tmp_path):
  directory, expected = _graph_dir(tmp_path)
  size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
  margin = 32 * 2**20
  assert size > 4 * margin  # the graph's files are far larger than the headroom
  in_ram = _open_under_limit(directory, margin, mmap=False)
  assert not in_ram["ok"]  # the limit is real: reading the arrays into RAM fails
  mapped = _open_under_limit(directory, margin, mmap=True)
  assert mapped["ok"] and mapped["memmap"]
  assert mapped["items"] == 40_000
  assert mapped["sum"] == expected
