"""Logging for the command-line tools: our progress lines at INFO, other libraries' chatter off.

Library modules log with ``logging.getLogger(__name__)``; nothing in the library prints.
"""

import logging
import sys

from absl import logging as absl_logging


class _DropOrbaxErrors(logging.Filter):
    """Orbax logs a traceback from each of its threads when a save fails; the failure itself
    reaches the user once, as one line (train/checkpoint.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and '/orbax/' in record.pathname)


def _quiet_abandoned_writes(hook=sys.unraisablehook):
    """TensorStore completes writes of a failed save on Orbax's already closed event loop and
    reports each as an unraisable 'Event loop is closed'; everything else is shown."""

    def unraisable(info):
        if isinstance(info.exc_value, RuntimeError) and 'Event loop is closed' in str(
            info.exc_value
        ):
            return
        hook(info)

    return unraisable


def setup(level: int = logging.INFO) -> None:
    """Shows this package's records at `level`; Orbax, TFDS and JAX only from WARNING up."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger('sparse_vit_jax').setLevel(level)
    absl_logger = logging.getLogger('absl')
    if not any(isinstance(f, _DropOrbaxErrors) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbaxErrors())
        sys.unraisablehook = _quiet_abandoned_writes()
