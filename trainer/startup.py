"""Quiet TensorFlow start-up for the command-line jobs.

Each job (`trainer.train`, `trainer.infer`, `trainer.evaluate`, `trainer.export`,
`serving.server`) imports this module before anything that loads TensorFlow:

    from trainer import startup  # noqa: F401  (before TensorFlow loads)

Importing it gives `TF_CPP_MIN_LOG_LEVEL` (TensorFlow's C++ log threshold, read
once when TensorFlow loads) a default; a value already in the environment wins.

* "2" on a machine with an NVIDIA device: INFO and WARNING lines (oneDNN,
  CPU-feature and CUDA-stub notices) are dropped, C++ errors are kept.
* "3" on a machine without one. The pip TensorFlow build always calls `cuInit`,
  and on a CPU-only machine it logs the failure at ERROR level
  (`failed call to cuInit: ... UNKNOWN ERROR (303)`). No narrower switch exists
  in TF 2.20 (`CUDA_VISIBLE_DEVICES=""` or `-1` does not stop it), so C++ ERROR
  lines are dropped too. What still prints: Python exceptions, including every
  failed TensorFlow op (the exception carries the C++ message), the jobs' own
  log lines, and C++ fatal errors.

`TF_CPP_MIN_LOG_LEVEL=0` shows everything again.
"""

import glob
import os


def _has_nvidia_device() -> bool:
  """True when the kernel exposes an NVIDIA GPU (Linux device node, or WSL's)."""
  return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _has_nvidia_device() else "3")
