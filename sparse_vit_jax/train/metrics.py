"""Metrics to the workdir: one JSON line per record (metrics.jsonl) and TensorBoard event files.

Only process 0 writes. Values are plain Python numbers by the time they get here. In a bucket,
both files are kept in the system temp dir and uploaded whole (TensorFlow's own GCS client
cannot reach an emulator, and objects cannot be appended to): at most once a minute while
training, and always by `flush(force=True)` — at every checkpoint, evaluation and the end.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import jax
import numpy as np
import tensorflow as tf

from sparse_vit_jax import paths

METRICS_FILE = 'metrics.jsonl'


def to_python(value: Any) -> Any:
    """Numbers and small arrays as JSON-able Python values."""
    if isinstance(value, Mapping):
        return {k: to_python(v) for k, v in value.items()}
    array = np.asarray(value)
    if array.ndim == 0:
        return array.item()
    return array.tolist()


class MetricWriter:
    """Appends records to <workdir>/metrics.jsonl and scalars to <workdir>/tensorboard.

    `resume_step`: records of later steps (written before an interruption; the resumed run
    writes them again) are dropped, so every step has one record of each kind.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.records = paths.AppendOnlyFile(
            paths.join(workdir, METRICS_FILE),
            keep=lambda line: json.loads(line)['step'] <= resume_step,
        )
        self.events = paths.StagedDir(paths.join(workdir, 'tensorboard'))
        self.summary = tf.summary.create_file_writer(self.events.local)

    def write(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        """One record: `kind` is e.g. 'train', 'eval' or 'sparsity'; nested values are flattened
        with '/' for TensorBoard and kept nested in the JSON line."""
        if not self.enabled:
            return
        values = to_python(values)
        self.records.append(json.dumps({'step': step, 'kind': kind, **values}))
        with self.summary.as_default(step=step):
            for name, value in _flatten(values):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tf.summary.scalar(f'{kind}/{name}', value)
        self.flush()

    def flush(self, force: bool = False) -> None:
        if not self.enabled:
            return
        self.summary.flush()
        self.records.flush(force)
        self.events.sync(force)

    def close(self) -> None:
        if not self.enabled:
            return
        self.summary.close()
        self.records.close()
        self.events.close()
        self.enabled = False


def _flatten(values: Mapping[str, Any], prefix: str = ''):
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f'{prefix}{key}/')
        else:
            yield f'{prefix}{key}', value


def read_metrics(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run (optionally of one kind), in the order they were written."""
    path = paths.resolve(paths.join(workdir, METRICS_FILE))
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r['kind'] == kind]
