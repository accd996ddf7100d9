"""Preemption: SIGTERM asks the run to save its current step and stop cleanly.

TPU VMs (and most cluster schedulers) send SIGTERM shortly before they take a machine away.
With several processes, every process must stop at the same step. `jax.distributed.initialize`
installs JAX's own SIGTERM listener, which tells every process through the coordination
service; `multihost_utils.reached_preemption_sync_point` then fires at the same step
everywhere. A Python SIGTERM handler would replace that listener (the signal would then never
reach JAX), so one is installed only for a single process.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Context manager; `requested(step)` is True at the step where the run should stop."""

    def __init__(self):
        self._signalled = False
        self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self._signalled = True

    def __enter__(self) -> PreemptionWatcher:
        single = jax.process_count() == 1
        if single and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled
