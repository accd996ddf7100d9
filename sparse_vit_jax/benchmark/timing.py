"""Timing: several things measured alternately in one process, and the numbers around them.

On a shared or thermally drifting machine two measurements taken one after the other see
different machines. Taking blocks of steps in turn (A, B, A, B, ...) spreads the drift over
both, so their ratio is far steadier than either number alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import resource
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np


@dataclasses.dataclass
class Runner:
    """One thing to time.

    Attributes:
      name: its key in the results.
      call: runs one step (or one input pass) and returns only once its results are ready
        (block_until_ready): asynchronous dispatch would otherwise time only the launch.
      images: images one call processes.
      per_block: calls per block of the alternation.
      warmup: untimed calls before any block (compilation, autotuning, allocator warm-up).
    """

    name: str
    call: Callable[[], Any]
    images: int
    per_block: int = 1
    warmup: int = 1


@dataclasses.dataclass
class Timings:
    """Wall and process-CPU seconds of every timed call, and the order the blocks ran in."""

    seconds: dict[str, list[float]]
    cpu_seconds: dict[str, list[float]]
    order: list[str]


def cpu_time() -> float:
    """User + system CPU seconds of this process, all threads (tf.data, XLA, torch)."""
    times = os.times()
    return times.user + times.system


def alternate(runners: Sequence[Runner], rounds: int) -> Timings:
    """Warms every runner up, then times `rounds` rounds of one block per runner, in turn."""
    if rounds < 1:
        raise ValueError(f'rounds must be >= 1, got {rounds}')
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ValueError(f'runner names must be unique, got {names}')
    for runner in runners:
        for _ in range(runner.warmup):
            runner.call()
    seconds = {name: [] for name in names}
    cpu_seconds = {name: [] for name in names}
    order = []
    for _ in range(rounds):
        for runner in runners:
            order.append(runner.name)
            for _ in range(runner.per_block):
                wall, cpu = time.perf_counter(), cpu_time()
                runner.call()
                cpu_seconds[runner.name].append(cpu_time() - cpu)
                seconds[runner.name].append(time.perf_counter() - wall)
    return Timings(seconds, cpu_seconds, order)


def rounds_for(steps: int, block: int) -> tuple[int, int]:
    """(rounds, steps per block) giving at least `steps` timed steps in blocks of `block`."""
    if steps < 1 or block < 1:
        raise ValueError(f'steps and block must be >= 1, got {steps} and {block}')
    block = min(block, steps)
    return -(-steps // block), block


def summarize(seconds: Sequence[float], images: int) -> dict[str, Any]:
    """images_per_sec from the median step time; step time median / p10 / p90 in ms."""
    ms = np.asarray(seconds, np.float64) * 1e3
    median = float(np.median(ms))
    return {
        'images_per_sec': images / (median / 1e3),
        'step_time_ms': {
            'median': median,
            'p10': float(np.percentile(ms, 10)),
            'p90': float(np.percentile(ms, 90)),
        },
        'timed_steps': len(ms),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == 'darwin' else 2**10)


def environment() -> dict[str, Any]:
    """Where and when a measurement ran: enough to tell two machines or two setups apart."""
    devices = jax.devices()
    return {
        'devices': {
            'count': len(devices),
            'platform': devices[0].platform,
            'kind': devices[0].device_kind,
        },
        'jax_version': jax.__version__,
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': {
            'platform': platform.platform(),
            'processor': platform.processor() or platform.machine(),
            'cpu_count': os.cpu_count(),
            'python': platform.python_version(),
        },
    }


def prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return {f'{prefix}{k}': v for k, v in values.items()}


def finish(result: dict[str, Any], timings: Timings) -> dict[str, Any]:
    """Adds what every measurement reports: block order, peak memory, the environment."""
    result['order'] = timings.order
    result['peak_rss_mb'] = peak_rss_mb()
    result.update(environment())
    return result
