"""One quote style in the repository, as pyproject.toml configures it for ruff (single quotes;
double quotes only where they save an escape)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_quote_style():
    result = subprocess.run(
        [sys.executable, '-m', 'ruff', 'check', '--select', 'Q', '--output-format', 'concise', '.'],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
