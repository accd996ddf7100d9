"""The path layer: every file of a run is read and written through here, local or in a bucket.

Paths are `etils.epath` paths (what Orbax and TFDS use), so `gs://bucket/run` works wherever
`runs/x` does. Remote files go through fsspec (gcsfs for `gs://`), array data of checkpoints
through TensorStore's own GCS driver; `configure()` points both at one place:

- a real bucket: the machine's Google credentials (a TPU VM has them; elsewhere
  `gcloud auth application-default login`);
- a local GCS emulator (fake-gcs-server): the standard `STORAGE_EMULATOR_HOST=http://HOST:PORT`,
  which gcsfs honours and which is translated here for TensorStore.

Object stores cannot append to or rename a file, so the two helpers for files that grow
(`AppendOnlyFile`, `StagedDir`) keep a copy in the system temp dir and upload it whole; local
paths are written in place. Nothing here writes to the local disk outside the workdir and the
system temp dir.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import Callable

from etils import epath

PathLike = str | os.PathLike
# Remote copies of growing files are uploaded at most this often, unless forced (at a
# checkpoint, an evaluation, the end of a run): an upload rewrites the whole object.
UPLOAD_EVERY_SECONDS = 60.0


def configure() -> None:
    """Routes gs:// through fsspec/gcsfs, and to the emulator when STORAGE_EMULATOR_HOST is set.

    Idempotent; called whenever a path is made, so it sees variables set after import.
    """
    # epath picks TensorFlow's GCS client when TF is installed, and that client cannot be
    # pointed at an emulator; one client (gcsfs) for every remote file keeps tests honest.
    if os.environ.get('EPATH_USE_TF') is None:
        os.environ['EPATH_USE_TF'] = 'false'
        from etils.epath import gpath

        gpath._is_tf_installed.cache_clear()  # it may have been asked before the line above
    import fsspec.config

    # Other processes (hosts, TensorStore) write here too: never trust a cached listing.
    fsspec.config.conf.setdefault('gcs', {})['use_listings_cache'] = False
    emulator = os.environ.get('STORAGE_EMULATOR_HOST')
    if emulator:
        # The emulator variable is the one switch: TensorStore (checkpoint arrays) follows it.
        os.environ['TENSORSTORE_GCS_HTTP_URL'] = (
            emulator if '://' in emulator else f'http://{emulator}'
        )
        # TensorStore's fixed-token hook: the emulator checks no credentials.
        os.environ.setdefault('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'emulator')
        # gcsfs would first ask the storage-control API (gRPC, absent from the emulator) what
        # kind of bucket this is, and wait for it to time out.
        os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')


def resolve(path: PathLike) -> epath.Path:
    """`path` as an epath.Path; local paths made absolute (Orbax requires it), `~` expanded."""
    configure()
    text = os.fspath(path)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_remote(path: PathLike) -> bool:
    """Whether `path` names an object store (gs://, s3://, ...) rather than the local disk."""
    return '://' in os.fspath(path)


def join(path: PathLike, *parts: str) -> str:
    """`path`/`parts` as a string, for messages and for libraries that take strings."""
    return os.fspath(resolve(path).joinpath(*parts))


def write_atomic(path: PathLike, data: str | bytes) -> None:
    """Writes the whole file so that readers see the old or the new content, never a part.

    An object upload is atomic already; a local file is written beside and renamed.
    """
    target = resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = 'wb' if isinstance(data, bytes) else 'w'
    if is_remote(target):
        with target.open(mode) as f:
            f.write(data)
        return
    staging = target.with_name(f'.{target.name}.tmp-{os.getpid()}')
    with staging.open(mode) as f:
        f.write(data)
    staging.replace(target)


def check_writable(folder: PathLike) -> None:
    """Creates `folder` if needed and writes and removes a probe file in it; raises
    PermissionError (one line: the folder, why, the fix) when that fails."""
    probe = resolve(folder) / f'.write-test-{uuid.uuid4().hex}'
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text('')
        probe.unlink()
    except OSError as error:
        reason = error.strerror or (str(error).splitlines() or [type(error).__name__])[0]
        raise PermissionError(
            f'workdir {os.fspath(folder)} is not writable ({reason}); choose another --workdir'
        ) from None


# How a full disk (or quota) reads in the errors of Python, TensorStore and TensorFlow.
_NO_SPACE = re.compile(r'No space left on device|os_error_code=.28.|Disk quota exceeded')


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or an exception it was raised from) says the disk or quota is full."""
    while error is not None:
        if getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _NO_SPACE.search(str(error)):
            return True
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return False


def free_bytes(path: PathLike) -> int | None:
    """Free space on the local filesystem holding `path` (None for remote paths)."""
    if is_remote(path):
        return None
    folder = os.path.abspath(os.fspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder).free


class AppendOnlyFile:
    """A text file that grows by whole lines (e.g. metrics.jsonl), local or remote.

    Local: appended in place, every line on disk as soon as it is written. Remote: mirrored in
    the system temp dir and uploaded whole by `flush` (at most every UPLOAD_EVERY_SECONDS unless
    forced). `keep` filters the lines already there when the file is opened (e.g. records of
    steps a resumed run will redo).
    """

    def __init__(self, path: PathLike, keep: Callable[[str], bool] | None = None):
        self.path = resolve(path)
        self.remote = is_remote(self.path)
        self._last_upload = 0.0
        lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        kept = [line for line in lines if line.strip() and (keep is None or keep(line))]
        if self.remote:
            handle, self._mirror = tempfile.mkstemp(suffix='-' + self.path.name)
            with os.fdopen(handle, 'w') as f:
                f.writelines(kept)
            if len(kept) != len(lines):
                self.flush(force=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if len(kept) != len(lines):
                write_atomic(self.path, ''.join(kept))

    @property
    def local_path(self) -> str:
        """The local file holding the content: the file itself, or its mirror in the temp dir
        (for a writer that needs a file name, e.g. a subprocess's output; `flush` uploads)."""
        return self._mirror if self.remote else os.fspath(self.path)

    def append(self, line: str) -> None:
        with open(self.local_path, 'a') as f:
            f.write(line if line.endswith('\n') else line + '\n')

    def flush(self, force: bool = False) -> None:
        """Uploads a remote file when forced or when the last upload is old enough."""
        now = time.monotonic()
        if not self.remote or (not force and now - self._last_upload < UPLOAD_EVERY_SECONDS):
            return
        with open(self._mirror, 'rb') as f:
            write_atomic(self.path, f.read())
        self._last_upload = now

    def close(self) -> None:
        if self.remote:
            self.flush(force=True)
            os.remove(self._mirror)
            self.remote = False  # closed: nothing more to upload


class StagedDir:
    """A folder that a library writes with local file calls (TensorBoard's event files).

    `local` is the folder to hand to the library: the folder itself when it is local, a fresh
    folder in the system temp dir when it is remote; `sync` uploads what changed there.
    """

    def __init__(self, path: PathLike):
        self.path = resolve(path)
        self.remote = is_remote(self.path)
        self._last_upload = 0.0
        self._uploaded: dict[str, tuple[int, int]] = {}
        if self.remote:
            self.local = tempfile.mkdtemp(suffix='-' + self.path.name)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.local = os.fspath(self.path)

    def sync(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.remote or (not force and now - self._last_upload < UPLOAD_EVERY_SECONDS):
            return
        for folder, _, names in os.walk(self.local):
            for name in names:
                source = os.path.join(folder, name)
                stat = os.stat(source)
                version = (stat.st_size, stat.st_mtime_ns)
                if self._uploaded.get(source) == version:
                    continue
                relative = os.path.relpath(source, self.local)
                with open(source, 'rb') as f:
                    write_atomic(self.path / relative, f.read())
                self._uploaded[source] = version
        self._last_upload = now

    def close(self) -> None:
        if self.remote:
            self.sync(force=True)
            shutil.rmtree(self.local, ignore_errors=True)
            self.remote = False
