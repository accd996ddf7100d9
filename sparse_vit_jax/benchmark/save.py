"""Checkpoint saves of a config's train state: bytes on disk and seconds, in both mask layouts,
and whether the asynchronous save overlaps the train step that follows it.

A checkpoint stores the sparse masks once (`Checkpointer.save`); the earlier layout also kept
them inside the optimizer state. Both are written here from the same state, in alternating
rounds, so their ratio is measured on the same machine state. A save returns once its arrays
are copied off the devices; Orbax writes them in the background while training goes on. The
overlap is measured by running one train step between the save's return and its completion,
against a save alone and a step alone.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import ml_collections
import numpy as np

from sparse_vit_jax import paths
from sparse_vit_jax.benchmark import jax_bench, timing
from sparse_vit_jax.train.checkpoint import Checkpointer

# Layout name -> Checkpointer.save(masks_in_opt_state=...).
LAYOUTS = {'masks_once': False, 'masks_twice': True}


def _median(values: list[float]) -> float:
    return float(np.median(values))


class _Saver:
    """Saves the bench's current state to one workdir, numbering steps itself."""

    def __init__(self, bench: jax_bench.TrainBench, workdir: str, masks_in_opt_state: bool):
        self.bench, self.masks_in_opt_state = bench, masks_in_opt_state
        self.checkpointer = Checkpointer(workdir, keep=2)
        self.meta = {'config': bench.config.to_dict()}
        self.step = 0

    def start(self) -> float:
        """Starts a save; the seconds until it returned (the arrays copied off the devices)."""
        self.step += 1
        state = self.bench.state.replace(step=self.bench.count(self.step))
        start = time.perf_counter()
        self.checkpointer.save(state, self.meta, masks_in_opt_state=self.masks_in_opt_state)
        return time.perf_counter() - start

    def finish(self) -> None:
        self.checkpointer.wait()

    def sizes(self) -> dict[str, int]:
        return self.checkpointer.item_bytes(self.checkpointer.latest_step())


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def save_speed(
    config: ml_collections.ConfigDict,
    *,
    batch: int,
    saves: int = 3,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Checkpoint bytes and save seconds of `config`'s train state (its initial weights and
    masks; a save's cost does not depend on the values) in both layouts, `saves` timed saves
    each after one untimed; then the overlap of a save with a train step at global `batch`."""
    config = jax_bench.with_batch(config, batch)
    bench = jax_bench.TrainBench(config)
    count = bench.count(0)
    with tempfile.TemporaryDirectory(prefix='save_bench_') as scratch:
        root = workdir or scratch
        savers = {
            name: _Saver(bench, paths.join(root, name), twice) for name, twice in LAYOUTS.items()
        }
        bench.step(count)  # warm: compiled, buffers allocated
        seconds = {name: {'return': [], 'complete': []} for name in LAYOUTS}
        for round_ in range(saves + 1):
            for name, saver in savers.items():
                start = time.perf_counter()
                returned = saver.start()
                saver.finish()
                if round_:  # the first round is warm-up
                    seconds[name]['return'].append(returned)
                    seconds[name]['complete'].append(time.perf_counter() - start)
        sizes = {name: saver.sizes() for name, saver in savers.items()}

        # Overlap: save alone, step alone, and a save with a step run before it completes.
        once = savers['masks_once']
        alone, step, both = [], [], []
        for _ in range(saves):
            alone.append(_timed(lambda: (once.start(), once.finish())))
            step.append(_timed(lambda: bench.step(count)))
            both.append(_timed(lambda: (once.start(), bench.step(count), once.finish())))
        for saver in savers.values():
            saver.checkpointer.close()

    result = {'mode': 'save', 'model': config.model.name, 'config_method': config.sparsity.method}
    result['batch'] = batch
    for name in LAYOUTS:
        result[name] = {
            'bytes': sum(sizes[name].values()),
            'item_bytes': sizes[name],
            'return_s': _median(seconds[name]['return']),
            'complete_s': _median(seconds[name]['complete']),
        }
    once, twice = result['masks_once'], result['masks_twice']
    result['once_vs_twice'] = {
        key: once[key] / twice[key] for key in ('bytes', 'return_s', 'complete_s')
    }
    save_s, step_s, both_s = _median(alone), _median(step), _median(both)
    hideable = min(save_s - once['return_s'], step_s)  # the background write, or the step
    result['overlap'] = {
        'save_s': save_s,
        'step_s': step_s,
        'save_with_step_s': both_s,
        # 1: the step ran entirely under the background write; 0: one after the other.
        'hidden_fraction': (save_s + step_s - both_s) / hideable if hideable > 0 else 0.0,
    }
    result['timed_saves'] = saves
    result['peak_rss_mb'] = timing.peak_rss_mb()
    result.update(timing.environment())
    return result
