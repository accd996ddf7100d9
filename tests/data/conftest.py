"""Shared setup for the data tests: quiet TF and import this checkout."""

import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# The venv may hold an editable install of another checkout; test this one.
_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if sys.path[0] != _REPO_ROOT:
  sys.path.insert(0, _REPO_ROOT)
