"""Training throughput that can be trusted: time between points where the device is known idle.

JAX dispatches train steps asynchronously: the host loop returns from `train_step` long before
the device has run it, so host timestamps taken between dispatches measure dispatch, not
training. Host and device only agree at a sync point, where the host waits for a result (the
metrics a log line fetches, the state before an evaluation). `StepTimer` measures from one such
point to the next and counts the steps dispatched in between, so it needs no sync of its own
beyond the one at the end of the run's first step, whose compile it leaves out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable, Iterator


@dataclasses.dataclass(frozen=True)
class Interval:
    """Train steps and the seconds they took (sync point to sync point, pauses removed)."""

    steps: int
    seconds: float

    def images_per_sec(self, batch_size: int) -> float | None:
        """None when the interval holds no timed step (e.g. only the compiling first step)."""
        if self.steps == 0 or self.seconds <= 0:
            return None
        return self.steps * batch_size / self.seconds

    def eta_seconds(self, remaining_steps: int) -> float | None:
        """Seconds to train `remaining_steps` more at this interval's pace."""
        if self.steps == 0 or self.seconds <= 0:
            return None
        return remaining_steps * self.seconds / self.steps


class StepTimer:
    """Counts steps and seconds between sync points; pauses (e.g. evaluation) are left out.

    The loop calls `start()` at a sync point once the first step (and its compile) is done,
    `step()` after each later dispatch, `paused()` around work that is not training, and
    `lap()` at each sync point where it reports (it returns the interval since the last lap and
    starts the next one). Every call marked "at a sync point" must come after the host waited
    for the device, or the device's pending work is timed in the wrong interval.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._start: float | None = None
        self._steps = 0
        self._paused = 0.0

    def start(self) -> None:
        """At a sync point: timing starts here, with no step counted."""
        self._start, self._steps, self._paused = self._clock(), 0, 0.0

    def step(self) -> None:
        """One more train step dispatched (counted only once timing has started)."""
        if self._start is not None:
            self._steps += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Enter at a sync point: the time inside is not training time."""
        begin = self._clock()
        try:
            yield
        finally:
            self._paused += self._clock() - begin

    def lap(self) -> Interval:
        """At a sync point: the interval since the previous lap (or start), then a new one."""
        if self._start is None:
            return Interval(0, 0.0)
        now = self._clock()
        interval = Interval(self._steps, now - self._start - self._paused)
        self._start, self._steps, self._paused = now, 0, 0.0
        return interval
