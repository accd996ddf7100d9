"""The path layer, on the local disk and on a real GCS server (fake-gcs-server on localhost):
every client (epath/gcsfs for files, TensorStore for checkpoint arrays) reaches the emulator,
files that grow are uploaded whole, and nothing leaves the system temp dir locally."""

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_vit_jax import paths
from sparse_vit_jax.train.checkpoint import Checkpointer


def test_local_paths_behave_as_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.resolve('runs/x')) == str(tmp_path / 'runs' / 'x')
    assert not paths.is_remote('runs/x') and paths.is_remote('gs://b/x')
    paths.write_atomic('runs/x/config.json', '{"a": 1}')
    assert json.loads((tmp_path / 'runs/x/config.json').read_text()) == {'a': 1}
    assert os.listdir(tmp_path / 'runs/x') == ['config.json']  # no staging file left

    log = paths.AppendOnlyFile('runs/x/metrics.jsonl')
    log.append('{"step": 1}')
    assert (tmp_path / 'runs/x/metrics.jsonl').read_text() == '{"step": 1}\n'  # at once
    log.append('{"step": 2}')
    log.close()
    kept = paths.AppendOnlyFile('runs/x/metrics.jsonl', keep=lambda l: '"step": 1' in l)
    kept.close()
    assert (tmp_path / 'runs/x/metrics.jsonl').read_text() == '{"step": 1}\n'
    staged = paths.StagedDir('runs/x/tensorboard')
    assert staged.local == str(tmp_path / 'runs/x/tensorboard')  # written in place


def test_gs_paths_reach_the_emulator_through_gcsfs_and_tensorstore(
    gcs_emulator, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = paths.resolve('gs://bucket/paths/config.json')
    assert type(path._backend).__name__ == '_FileSystemSpecBackend'  # not TensorFlow's client
    assert os.environ['TENSORSTORE_GCS_HTTP_URL'] == os.environ['STORAGE_EMULATOR_HOST']
    paths.write_atomic(path, '{"a": 1}')
    assert gcs_emulator.objects('bucket', 'paths/') == {'paths/config.json': 8}

    log = paths.AppendOnlyFile('gs://bucket/paths/metrics.jsonl')
    log.append('{"step": 1}')
    log.flush(force=True)
    log.append('{"step": 2}')
    log.flush()  # within UPLOAD_EVERY_SECONDS of the last upload: stays local
    assert path.with_name('metrics.jsonl').read_text() == '{"step": 1}\n'
    log.close()
    assert path.with_name('metrics.jsonl').read_text() == '{"step": 1}\n{"step": 2}\n'

    staged = paths.StagedDir('gs://bucket/paths/tensorboard')
    assert staged.local.startswith(str(tmp_path))
    with open(os.path.join(staged.local, 'events.1'), 'w') as f:
        f.write('abc')
    staged.sync(force=True)
    with open(os.path.join(staged.local, 'events.1'), 'a') as f:
        f.write('def')
    staged.close()
    assert gcs_emulator.objects('bucket', 'paths/tensorboard/') == {'paths/tensorboard/events.1': 6}
    assert not os.listdir(tmp_path)  # the local copies are gone

    # Orbax: directories through epath, array data through TensorStore's GCS driver.
    checkpointer = Checkpointer('gs://bucket/paths')
    params = {'w': jnp.arange(6.0).reshape(2, 3)}
    checkpointer.save_model(4, params, None, {'config': {}})
    assert checkpointer.all_steps() == [4]
    target = {'w': jax.ShapeDtypeStruct((2, 3), jnp.float32, sharding=params['w'].sharding)}
    restored = checkpointer.restore({'params': target})
    np.testing.assert_array_equal(restored['params']['w'], params['w'])
    checkpointer.close()
    assert 'paths/checkpoints/4/commit_success.txt' in gcs_emulator.objects('bucket', 'paths/')


def test_a_workdir_that_cannot_be_written_is_refused_in_one_line(gcs_emulator):
    with pytest.raises(PermissionError, match='gs://no-such-bucket/run is not writable'):
        paths.check_writable('gs://no-such-bucket/run')
