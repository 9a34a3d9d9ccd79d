r"""Merges bench/quality.py outputs of one configuration run in parts (JSON output).

    .venv/bin/python bench/merge_quality.py --output_json=bench/results/quality_gowalla_test.json \
        bench/results/quality_gowalla_test_seed0.json bench/results/quality_gowalla_test_seed12.json \
        [--baselines_json=out/final/gowalla/eval_baselines_test.json]

When seeds of one configuration were trained by separate `bench/quality.py`
runs (e.g. one seed first, the others later), this combines them into the
single JSON `bench/quality.py` would have written: the per-seed PinSage
metrics of every part, their mean and sample standard deviation, every
part's commands and wall times, and the baselines (from a part that ran them,
or from a `trainer.evaluate --output_json` file given by --baselines_json).
The parts must agree on dataset, split, protocol, configuration, flags and
graph; a seed present in two parts is an error. Written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from quality import _mean_std, write_output  # noqa: E402

_MUST_AGREE = ("dataset", "split", "protocol", "max_queries", "config", "train_flags",
               "prepare_flags", "eval_flags", "graph_dir")
_LISTS = ("train_flags", "prepare_flags", "eval_flags")  # absent (older outputs) == []


def merge(parts: list[dict[str, Any]], baselines: dict[str, Any] | None = None
          ) -> dict[str, Any]:
  """The merged output (see the module docstring); ValueError on a mismatch."""
  if not parts:
    raise ValueError("nothing to merge.")
  parts = [{**p, **{k: p.get(k) or [] for k in _LISTS}} for p in parts]
  first = parts[0]
  for i, part in enumerate(parts[1:], 1):
    for key in _MUST_AGREE:
      if part.get(key) != first.get(key):
        raise ValueError(f"part {i} differs from part 0 in {key!r}: "
                         f"{part.get(key)!r} vs {first.get(key)!r}.")
  per_seed: dict[str, Any] = {}
  methods: dict[str, Any] = {}
  for part in parts:
    for seed, run in part["methods"]["pinsage"]["per_seed"].items():
      if seed in per_seed:
        raise ValueError(f"seed {seed} appears in two parts.")
      per_seed[seed] = run
    methods.update({k: v for k, v in part["methods"].items() if k != "pinsage"})
  if baselines is not None:
    for name, result in baselines["methods"].items():
      methods[name] = {"metrics": result["metrics"], "wall_time_s": result.get("wall_time_s")}
  seeds = sorted(int(s) for s in per_seed)
  names = sorted(next(iter(per_seed.values()))["metrics"])
  summary = {k: _mean_std([float(per_seed[str(s)]["metrics"][k]) for s in seeds]) for k in names}
  methods["pinsage"] = {"metrics": {k: v["mean"] for k, v in summary.items()},
                        "mean_std": summary, "per_seed": per_seed}
  merged = {key: first.get(key) for key in _MUST_AGREE + ("config_json",)}
  merged.update({
      "seeds": seeds,
      "counts": first.get("counts") or (baselines or {}).get("counts"),
      "methods": methods,
      "parts": [{"seeds": p["seeds"], "commands": p["commands"], "wall_time_s": p["wall_time_s"]}
                for p in parts],
  })
  if baselines is not None:
    merged["baselines_from"] = {"counts": baselines.get("counts")}
  return merged


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("parts", nargs="+", help="bench/quality.py output JSON files.")
  parser.add_argument("--baselines_json", default=None,
                      help="trainer.evaluate --output_json file with the baselines.")
  parser.add_argument("--output_json", required=True)
  args = parser.parse_args(argv)
  parts = []
  for path in args.parts:
    with open(path) as f:
      parts.append(json.load(f))
  baselines = None
  if args.baselines_json:
    with open(args.baselines_json) as f:
      baselines = json.load(f)
  try:
    merged = merge(parts, baselines)
  except ValueError as e:
    parser.error(str(e))
  write_output(merged, args.output_json, tag="merge_quality")


if __name__ == "__main__":
  main()
