"""Command-line glue shared by tools/: logging setup and one clear line for user errors.

This is the only module that prints. Bad input (an unknown or mistyped config field, a wrong
config value, a missing dataset, a corrupt checkpoint, a non-finite loss, an unwritable workdir)
ends with `error: <message>` on stderr and exit status 1, never a traceback: a `UserError`, or a
ValueError or OSError raised by this project's own code (the library, a config file, a tool),
whose messages name the problem and the fix. Anything else is a bug or a surprise from inside a
library (JAX, Orbax, TensorFlow) and keeps its traceback; `--verbose` keeps it for every error.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import sysconfig
import threading
import traceback

# TensorFlow reads these when it loads, so tools import this module before anything that loads
# it. Its INFO and WARNING lines off; and its oneDNN custom ops off, which also silences the
# banner TensorFlow prints twice per process whatever TF_CPP_MIN_LOG_LEVEL says ("oneDNN custom
# operations are on") and its "oneDNN supports DT_UINT8 only on platforms with AVX-512" error
# line. TensorFlow only runs the input pipeline here (JPEG decoding, resizing, augmentation),
# which runs as fast without them. A value already in the environment wins.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
from typing import Callable, NoReturn

from absl import app, flags

from sparse_vit_jax import logs
from sparse_vit_jax.errors import UserError

USER_ERRORS = (UserError, ValueError, OSError)
# Where this project's code lives: an error raised there is bad input described for the user.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_CODE = tuple(
    os.path.join(_REPO, folder) + os.sep for folder in ('sparse_vit_jax', 'configs', 'tools')
)
_STDLIB = os.path.abspath(sysconfig.get_paths()['stdlib']) + os.sep

_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'On an error, print its traceback too (not just the one line).'
)


def fail(message: str) -> NoReturn:
    print(f'error: {message}', file=sys.stderr, flush=True)
    # The line above is the report. Background work the error abandoned (Orbax's concurrent
    # reads of a damaged checkpoint, its writer threads on a full disk) may still raise while
    # the interpreter shuts down; its "Exception ignored" tracebacks would only bury the line.
    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None
    # asyncio reports a failed write task nobody awaited ('Task exception was never retrieved')
    # through its logger when the task is collected at exit.
    logging.getLogger('asyncio').disabled = True
    sys.exit(1)


def _flag_error_message(error: Exception, argv: list[str]) -> str:
    """The useful line of a flag-parsing error (config files raise with a whole traceback)."""
    if isinstance(error, AttributeError):  # ml_collections: an override names no field
        text = str(error).encode().decode('unicode_escape')
        field = re.search(r'(\w+)', text).group(1)
        hint = re.search(r'Did you mean "(\w+)"', text)
        culprits = [a for a in argv if re.match(rf'--config\.(\w+\.)*{field}\b', a)]
        where = f' in {culprits[0]}' if culprits else ''
        suggestion = f'; did you mean {hint.group(1)!r}?' if hint else ''
        return f'unknown config field {field!r}{where}{suggestion}'
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 2:  # a config file failed to load: its first and last lines say why
        return f'{lines[0]} {lines[-1]}'
    return ' '.join(lines)


def raised_by_own_code(error: BaseException) -> bool:
    """Whether `error` comes from this project's code: a `raise` of ours, or Python's own
    library called there (open, os.makedirs), rather than from inside JAX, Orbax or TensorFlow."""
    files = []
    tb = error.__traceback__
    while tb is not None:
        files.append(os.path.abspath(tb.tb_frame.f_code.co_filename))
        tb = tb.tb_next
    for path in reversed(files):  # innermost first; the standard library acts for its caller
        if not path.startswith(_STDLIB):
            return path.startswith(_OWN_CODE)
    return False


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, OSError, ValueError) as error:
        fail(_flag_error_message(error, argv))


def run(main: Callable[[list[str]], None]) -> None:
    """absl's app.run(main) with logging set up and user errors reported without a traceback."""

    def guarded(argv: list[str]) -> None:
        logs.setup()
        try:
            main(argv)
        except USER_ERRORS as error:
            expected = isinstance(error, UserError) or raised_by_own_code(error)
            if not expected:
                raise
            if _VERBOSE.value:
                traceback.print_exc()
            fail(str(error) if isinstance(error, UserError) else _flag_error_message(error, argv))

    app.run(guarded, flags_parser=_parse_flags)
