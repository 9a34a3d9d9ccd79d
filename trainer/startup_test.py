"""Tests for trainer.startup: the jobs start TensorFlow without C++ log noise."""

from __future__ import annotations

import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow's C++ log prefix: "2026-01-31 12:00:00.123456: E external/...cc:51] ...".
TF_CPP_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", re.MULTILINE)


@pytest.mark.slow  # starts TensorFlow in a subprocess
def test_job_starts_tensorflow_quietly_and_still_reports_its_error(tmp_path):
  # A missing model_dir fails after TensorFlow has loaded and listed its devices,
  # which is where a CPU-only machine logs "failed call to cuInit".
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  proc = subprocess.run(
      [sys.executable, "-m", "trainer.infer", f"--graph_dir={tmp_path / 'graph'}",
       f"--model_dir={tmp_path / 'model'}", f"--output_dir={tmp_path / 'out'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert "error: " in proc.stderr
  assert "cuInit" not in proc.stderr
  assert not TF_CPP_LOG_LINE.findall(proc.stderr), proc.stderr


def _level_after_import(monkeypatch, environ: dict[str, str], devices: list[str]) -> str:
  """TF_CPP_MIN_LOG_LEVEL once trainer.startup ran in `environ` with `devices` in /dev."""
  monkeypatch.setattr(os, "environ", dict(environ))  # the real environment stays untouched
  monkeypatch.setattr(glob, "glob", lambda pattern: devices)
  exists = os.path.exists
  monkeypatch.setattr(os.path, "exists", lambda path: path != "/dev/dxg" and exists(path))
  importlib.reload(importlib.import_module("trainer.startup"))
  return os.environ["TF_CPP_MIN_LOG_LEVEL"]


def test_default_without_nvidia_device_is_3_hiding_the_cuinit_error(monkeypatch):
  assert _level_after_import(monkeypatch, {}, devices=[]) == "3"


def test_default_with_nvidia_device_is_2_keeping_cpp_errors(monkeypatch):
  assert _level_after_import(monkeypatch, {}, devices=["/dev/nvidia0"]) == "2"


def test_user_value_wins(monkeypatch):
  environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
  assert _level_after_import(monkeypatch, environ, devices=[]) == "0"
