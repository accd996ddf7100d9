"""Logging for the command-line tools: our progress lines at INFO, other libraries' chatter off.

Library modules log with ``logging.getLogger(__name__)``; nothing in the library prints.
"""

import logging

from absl import logging as absl_logging


def setup(level: int = logging.INFO) -> None:
    """Shows this package's records at `level`; Orbax, TFDS and JAX only from WARNING up."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger('sparse_vit_jax').setLevel(level)
