"""The run record: `<workdir>/config.json`, what a run is and how it came to be.

Written by process 0 when a run starts: the resolved config, the command line, the library
versions and devices; each resumption adds an entry to its `history`. On resume the config is
compared with the record, field by field. A change to anything that alters the run's
mathematics is refused in one line listing every changed field as `field: old → new`, unless the
user allows it (`--allow_config_change`), which records the change in the history. Bookkeeping
fields (how often to log, evaluate and checkpoint, where the data lives, the device mesh) may
change freely.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import platform
import shlex
import sys
from typing import Any, Mapping

import jax

from sparse_vit_jax import paths
from sparse_vit_jax.errors import UserError

logger = logging.getLogger(__name__)

RECORD_FILE = 'config.json'
# Fields that do not change what is computed: cadence, storage locations, layout on devices,
# rematerialization (memory traded for compute, the same function).
BOOKKEEPING = (
    'log_every_steps',
    'eval_every_epochs',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'data.data_dir',
    'data.eval_batch_size',
    'mesh.',
    'model.remat',
)
PACKAGES = (
    'jax',
    'jaxlib',
    'flax',
    'optax',
    'orbax-checkpoint',
    'tensorstore',
    'tensorflow-cpu',
    'tensorflow',
    'tensorflow-datasets',
    'numpy',
    'ml_collections',
    'etils',
    'gcsfs',
)


class ConfigChangeError(UserError):
    """A resumed run's config changes its mathematics and the change was not allowed."""


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """{'a.b.c': value} over a nested config dict; sequences compared as lists."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
    return flat


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (old, new)} for every field whose value differs (a missing field reads None)."""
    old, new = flatten(old), flatten(new)
    return {
        k: (old.get(k), new.get(k))
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    }


def is_bookkeeping(field: str) -> bool:
    return any(field == b or (b.endswith('.') and field.startswith(b)) for b in BOOKKEEPING)


def format_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return ', '.join(f'{field}: {old!r} → {new!r}' for field, (old, new) in changes.items())


def versions() -> dict[str, str]:
    """Python, the installed versions of the packages that shape a run, and the devices."""
    found = {'python': platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    devices = jax.devices()
    found['devices'] = (
        f'{len(devices)} × {devices[0].device_kind} ({jax.process_count()} processes)'
    )
    return found


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec='seconds')


def command_line() -> str:
    return shlex.join([sys.executable, *sys.argv])


def read(workdir: str) -> dict[str, Any] | None:
    path = paths.resolve(paths.join(workdir, RECORD_FILE))
    return json.loads(path.read_text()) if path.exists() else None


def write(workdir: str, record: dict[str, Any]) -> None:
    """Writes the record (process 0; once the run has really started or resumed)."""
    if jax.process_index() == 0:
        paths.write_atomic(paths.join(workdir, RECORD_FILE), json.dumps(record, indent=1) + '\n')
    resumed = record['history'][-1] if record['history'] else None
    where = paths.join(workdir, RECORD_FILE)
    if resumed is None:
        logger.info('run record: %s (a new run)', where)
        return
    if resumed['changes']:
        logger.warning(
            'resuming at step %d with config changes: %s',
            resumed['resumed_at_step'],
            format_changes(resumed['changes']),
        )
    logger.info('run record: %s (resumed at step %d)', where, resumed['resumed_at_step'])


def prepare(
    workdir: str,
    config: Mapping[str, Any],
    *,
    resume_step: int | None,
    previous_config: Mapping[str, Any] | None = None,
    allow_change: bool = False,
) -> dict[str, Any]:
    """The record to `write` once the run starts: a new one, or the recorded one with this
    resumption added to its history. Raises ConfigChangeError (nothing written) when a resumed
    run's config changes the run's mathematics and `allow_change` is not set.

    resume_step: the step the run resumes from (None: a fresh start). previous_config: what the
    run was trained with when there is no record (a workdir from before records existed: the
    latest checkpoint's config).
    """
    config = json.loads(json.dumps(dict(config)))  # the form it takes in the file
    entry = {'time': _now(), 'command': command_line(), 'versions': versions()}
    record = read(workdir) if resume_step is not None else None
    if resume_step is None or (record is None and previous_config is None):
        return {'config': config, 'started': entry, 'history': []}
    if record is None:  # checkpoints from before run records: start one from their config
        record = {'config': json.loads(json.dumps(previous_config)), 'started': None, 'history': []}
    changes = differences(record['config'], config)
    math = {k: v for k, v in changes.items() if not is_bookkeeping(k)}
    if math and not allow_change:
        raise ConfigChangeError(
            f'this config changes the run in {workdir} (recorded in {RECORD_FILE}): '
            f'{format_changes(math)}. Resume with the recorded config, use a new --workdir, or '
            'pass --allow_config_change to continue with the change (it is recorded).'
        )
    record['history'].append({**entry, 'resumed_at_step': resume_step, 'changes': changes})
    record['config'] = config
    return record
