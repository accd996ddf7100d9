"""Metrics to the workdir: one JSON line per record (metrics.jsonl) and TensorBoard event files.

Only process 0 writes. Values are plain Python numbers by the time they get here.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
import tensorflow as tf

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
    """Appends records to <workdir>/metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, METRICS_FILE)
        self.summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

    def write(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        """One record: `kind` is e.g. 'train', 'eval' or 'sparsity'; nested values are flattened
        with '/' for TensorBoard and kept nested in the JSON line."""
        if not self.enabled:
            return
        values = to_python(values)
        with open(self.path, 'a') as f:
            f.write(json.dumps({'step': step, 'kind': kind, **values}) + '\n')
        with self.summary.as_default(step=step):
            for name, value in _flatten(values):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tf.summary.scalar(f'{kind}/{name}', value)
        self.summary.flush()


def _flatten(values: Mapping[str, Any], prefix: str = ''):
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f'{prefix}{key}/')
        else:
            yield f'{prefix}{key}', value


def read_metrics(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run (optionally of one kind), in the order they were written."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r['kind'] == kind]
