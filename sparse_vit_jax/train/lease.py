"""One writer per workdir: a lease file naming the training that holds it.

`<workdir>/lease.json` holds the holder (host, process id, start time), a heartbeat renewed every
HEARTBEAT_SECONDS by a background thread, and a random token. A second training on a held
workdir refuses to start, naming the holder. The lease is taken over, with a log line, when its
holder is gone: a process of this machine that no longer exists (a `kill -9` of the last run),
or a heartbeat older than STALE_SECONDS (a machine that was taken away). A clean exit,
preemption included, releases it.

Object stores have no exclusive create, so taking the lease is write, wait, read back: of two
trainings that write at once, only the one whose token is read back goes on (local disks take
an advisory lock around the same steps and need no wait). The heartbeat also reads the lease
back; if someone took it over, the run stops at its next log line.

With several processes, process 0 takes the lease for the run and the others follow its outcome.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import jax
import numpy as np
import psutil
from jax.experimental import multihost_utils

from sparse_vit_jax import paths
from sparse_vit_jax.errors import UserError

logger = logging.getLogger(__name__)

LEASE_FILE = 'lease.json'
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 120.0
SETTLE_SECONDS = 2.0  # remote only: longer than any write takes to become visible


class LeaseError(UserError):
    """The workdir is held by another training (or was taken from this one)."""


def _boot_id() -> str:
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            return f.read().strip()
    except OSError:
        return ''


def _now() -> float:
    return time.time()


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).isoformat(timespec='seconds')


def describe(holder: dict[str, Any]) -> str:
    age = _now() - holder.get('heartbeat', 0)
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started_at')}, "
        f'last heartbeat {age:.0f} s ago)'
    )


def holder_gone(holder: dict[str, Any], stale_seconds: float) -> str | None:
    """Why the holder of a lease is known to be gone, or None if it may still be running."""
    if _now() - holder.get('heartbeat', 0) > stale_seconds:
        return f'no heartbeat for more than {stale_seconds:.0f} s'
    same_machine = holder.get('host') == socket.gethostname() and holder.get('boot') == _boot_id()
    if same_machine:
        try:
            alive = psutil.Process(holder['pid']).create_time() == holder.get('pid_started')
        except (psutil.Error, KeyError):
            alive = False
        if not alive:
            return f"its process {holder.get('pid')} no longer exists"
    return None


class Lease:
    """The lease of one workdir; `acquire()` before writing anything, `release()` at the end."""

    def __init__(
        self,
        workdir: str,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_seconds: float = STALE_SECONDS,
    ):
        self.path = paths.resolve(paths.join(workdir, LEASE_FILE))
        self.heartbeat_seconds, self.stale_seconds = heartbeat_seconds, stale_seconds
        self.token = uuid.uuid4().hex
        self.leader = jax.process_index() == 0
        self.lost: str | None = None  # why the lease was lost, once it is
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the file

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # a torn write of a local file: treat as absent
            return None

    def _record(self, started: float) -> dict[str, Any]:
        process = psutil.Process()
        return {
            'token': self.token,
            'host': socket.gethostname(),
            'boot': _boot_id(),
            'pid': os.getpid(),
            'pid_started': process.create_time(),
            'processes': jax.process_count(),
            'started': started,
            'started_at': _iso(started),
            'heartbeat': _now(),
        }

    @contextlib.contextmanager
    def _exclusive(self):
        """An advisory lock on the workdir folder around check-and-write on a local disk (a
        no-op in a bucket)."""
        if paths.is_remote(self.path):
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # releases the lock

    # ------------------------------------------------------------------ taking and keeping

    def acquire(self) -> None:
        """Takes the lease for this run (process 0), or raises LeaseError naming the holder
        (PermissionError when the workdir cannot be written); every process raises alike."""
        error = None
        if self.leader:
            try:
                paths.check_writable(self.path.parent)
                self._take()
            except (LeaseError, OSError) as failed:
                error = failed
        if jax.process_count() > 1:
            ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not ok and error is None:  # another process: say why, as process 0 does
                holder = self.read()
                refused = f'process 0 could not take the lease of {self.path.parent} (see its log)'
                error = LeaseError(self._held_message(holder) if holder else refused)
        if error is not None:
            raise error
        if self.leader:
            self._thread = threading.Thread(target=self._beat, name='lease-heartbeat', daemon=True)
            self._thread.start()

    def _held_message(self, holder: dict[str, Any]) -> str:
        wait = max(0.0, self.stale_seconds - (_now() - holder.get('heartbeat', 0)))
        return (
            f'{self.path.parent} is in use by another training: {describe(holder)}. Wait for it '
            f'to finish or stop it, or use another --workdir (if that run is gone, the lease is '
            f'taken over automatically within {wait:.0f} s).'
        )

    def _take(self) -> None:
        with self._exclusive():
            holder = self.read()
            if holder is not None:
                gone = holder_gone(holder, self.stale_seconds)
                if gone is None:
                    raise LeaseError(self._held_message(holder))
                logger.warning(
                    'taking over the lease of %s from %s: %s',
                    self.path.parent,
                    describe(holder),
                    gone,
                )
            self._started = _now()
            paths.write_atomic(self.path, json.dumps(self._record(self._started)))
        if paths.is_remote(self.path):
            time.sleep(SETTLE_SECONDS)
            holder = self.read()
            if holder is None or holder.get('token') != self.token:
                raise LeaseError(self._held_message(holder or {}))
        logger.info(
            'lease of %s taken (pid %d on %s)', self.path.parent, os.getpid(), socket.gethostname()
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                holder = self.read()
                if holder is None or holder.get('token') != self.token:
                    who = describe(holder) if holder else 'nobody (the lease file was removed)'
                    self.lost = f'the lease of {self.path.parent} is now held by {who}'
                    return
                paths.write_atomic(self.path, json.dumps(self._record(self._started)))
            except Exception as error:  # a network blip: the next beat tries again
                logger.warning('lease heartbeat of %s failed: %s', self.path, error)

    def check(self) -> None:
        """Raises LeaseError on every process once the lease was taken from this run."""
        lost = self.lost
        if jax.process_count() > 1:
            if not multihost_utils.broadcast_one_to_all(np.int32(lost is not None)):
                return
            lost = lost or 'the lease of this workdir was taken over by another training'
        if lost:
            raise LeaseError(f'{lost}; this training stops without writing more.')

    def release(self) -> None:
        """Stops the heartbeat and removes the lease if it is still this run's."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with self._exclusive():
            holder = self.read()
            if holder is not None and holder.get('token') == self.token:
                self.path.unlink()
