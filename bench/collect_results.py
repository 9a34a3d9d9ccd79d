r"""Summarise evaluation JSONs of several seeds into one small committed result file.

    .venv/bin/python bench/collect_results.py --name=gowalla_test \
        --seed_json=0:out/g/s0/eval_test.json --seed_json=1:... --method=pinsage_pivots \
        --baselines_json=out/g/eval_baselines_test.json --config=trainer/configs/lightgcn.json \
        --command="..." --command="..." --train_summary=0:out/g/s0/model \
        --published='{"LightGCN": {"recall@20": 0.1830, "ndcg@20": 0.1554}}' \
        --output_json=results/gowalla_test.json

Output: {"name", "dataset", "protocol", "split", "config" (the file's contents), "commands",
"method", "seeds": {seed: metrics}, "mean": {metric: mean}, "std": {metric: sample std},
"baselines": {method: metrics}, "published": {...}, "training": {seed: trainer summary}}: every
number read from the evaluation outputs named in "sources", none typed in (except the
published ones, which are labelled as such). Written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from quality import _mean_std, write_output  # noqa: E402  (imports no TensorFlow)


def _pair(text: str, flag: str) -> tuple[int, str]:
  seed, sep, path = text.partition(":")
  if not sep or not seed.isdigit():
    raise SystemExit(f"{flag} must be SEED:PATH, got {text!r}")
  return int(seed), path


def _train_summary(path: str) -> dict:
  """trainer.train's summary: MODEL_DIR/train_summary.json, a JSON file, or the
  trainer's captured stdout (the summary is the last JSON object printed)."""
  if os.path.isdir(path):
    path = os.path.join(path, "train_summary.json")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  start = text.rfind("\n{\n")
  try:
    return json.loads(text if text.lstrip().startswith("{") else text[start + 1:])
  except json.JSONDecodeError as e:
    raise SystemExit(f"{path}: no trainer summary JSON ({e})") from e


def collect(args: argparse.Namespace) -> dict:
  seeds, sources, head = {}, [], None
  for text in args.seed_json:
    seed, path = _pair(text, "--seed_json")
    with open(path, encoding="utf-8") as f:
      result = json.load(f)
    if args.method not in result["methods"]:
      raise SystemExit(f"{path}: no method {args.method!r}; have {sorted(result['methods'])}")
    seeds[str(seed)] = result["methods"][args.method]["metrics"]
    sources.append(path)
    head = head or result
  names = sorted(set.intersection(*(set(m) for m in seeds.values())))
  stats = {name: _mean_std([seeds[s][name] for s in seeds]) for name in names}
  mean = {name: v["mean"] for name, v in stats.items()}
  std = {name: v["std"] for name, v in stats.items()}
  baselines = {}
  if args.baselines_json:
    with open(args.baselines_json, encoding="utf-8") as f:
      result = json.load(f)
    baselines = {name: m["metrics"] for name, m in result["methods"].items()}
    sources.append(args.baselines_json)
  config = None
  if args.config:
    with open(args.config, encoding="utf-8") as f:
      config = json.load(f)
  training = {}
  for text in args.train_summary:
    seed, path = _pair(text, "--train_summary")
    training[str(seed)] = _train_summary(path)
  return {
      "name": args.name,
      "dataset": head["dataset"], "protocol": head["protocol"], "split": head["split"],
      "counts": head.get("counts"),
      "config_file": args.config, "config": config,
      "commands": args.command,
      "method": args.method,
      "seeds": seeds, "mean": mean, "std": std,
      "baselines": baselines,
      "published": json.loads(args.published) if args.published else {},
      "training": training,
      "notes": args.note,
      "sources": sources,
  }


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--name", required=True)
  parser.add_argument("--seed_json", action="append", required=True,
                      help="SEED:PATH of a trainer.evaluate --output_json.")
  parser.add_argument("--method", default="pinsage")
  parser.add_argument("--baselines_json")
  parser.add_argument("--config")
  parser.add_argument("--command", action="append", default=[])
  parser.add_argument("--train_summary", action="append", default=[],
                      help="SEED:PATH: a model dir (its train_summary.json) or the trainer's "
                           "stdout log; gives steps, wall time and validation history.")
  parser.add_argument("--published", default=None, help="JSON of published numbers.")
  parser.add_argument("--note", action="append", default=[])
  parser.add_argument("--output_json", required=True)
  args = parser.parse_args(argv)
  write_output(collect(args), args.output_json, tag="collect_results")


if __name__ == "__main__":
  main()
