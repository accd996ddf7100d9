"""The tools' error handling (sparse_vit_jax/cli.py): bad input described by this project's code
is one line; an error from inside a library keeps its traceback, and --verbose shows it always."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tool whose main fails the way argv[1] says: in our code (the library's check of its input) or
# inside NumPy.
TOOL = '''
import sys
import numpy as np
from sparse_vit_jax import cli
from sparse_vit_jax.sparsity import schedules

def main(argv):
    if argv[1] == 'ours':
        schedules.prune_rate(0, total_steps=0, initial=0.5, final=0.0)
    np.zeros(3).reshape(2)

cli.run(main)
'''


def _tool(*args):
    return subprocess.run(
        [sys.executable, '-c', TOOL, *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_own_errors_are_one_line_library_errors_keep_their_traceback():
    ours = _tool('ours')
    assert ours.returncode == 1
    assert ours.stderr.strip().splitlines()[-1] == (
        'error: total_steps must be a positive integer, got 0'
    )
    assert 'Traceback' not in ours.stderr
    library = _tool('library')
    assert library.returncode == 1
    assert 'Traceback' in library.stderr and 'cannot reshape array of size 3' in library.stderr
    verbose = _tool('ours', '--verbose')
    assert verbose.returncode == 1 and 'Traceback' in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith('error: total_steps must be')
