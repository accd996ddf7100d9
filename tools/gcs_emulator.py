"""Run a local GCS server (fake-gcs-server, in memory) to try gs:// workdirs without a cloud.

  python tools/gcs_emulator.py [--port 4443] [--buckets bucket,data] &
  export STORAGE_EMULATOR_HOST=http://127.0.0.1:4443
  python tools/train.py --config ... --workdir gs://bucket/runs/x

Serves until interrupted (Ctrl-C or kill); objects live in memory only. Needs the test
requirements (pip install -r requirements-test.txt).
"""

import signal
import threading

from absl import app, flags

from sparse_vit_jax import cli, gcs_emulator

_PORT = flags.DEFINE_integer('port', 4443, 'Port on 127.0.0.1 (0: any free port).')
_BUCKETS = flags.DEFINE_list('buckets', ['bucket'], 'Buckets to create.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with gcs_emulator.Emulator(port=_PORT.value or None, buckets=tuple(_BUCKETS.value)) as server:
        print(f'export STORAGE_EMULATOR_HOST={server.url}', flush=True)
        print(
            f'buckets: {", ".join(f"gs://{b}" for b in _BUCKETS.value)} (Ctrl-C stops)', flush=True
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == '__main__':
    cli.run(main)
