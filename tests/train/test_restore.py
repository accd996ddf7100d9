"""Restore on any topology through the one restore function: a 1-device checkpoint restores onto
an 8-device FSDP 2×4 mesh (kernels really sharded, the same weights) and resumes there; the
checkpoint that FSDP run writes evaluates, exports, plots and benchmarks on 1 device with
bit-identical weights. (Two processes → one: tests/train/test_multihost.py.)"""

import json

import jax
import numpy as np

from sparse_vit_jax.benchmark import checkpoint_speed
from sparse_vit_jax.export import export_slim
from sparse_vit_jax.train import evaluation, loop, restore
from sparse_vit_jax.visualize import render_tokens

RUN = 'method=s2viteplus,keep_tokens=9'


def test_checkpoints_restore_across_device_counts_and_meshes(
    tiny_config, tiny_data_dir, run_with_devices, tmp_path
):
    workdir = str(tmp_path / 'run')
    small_shards = {'mesh.fsdp_min_size': 256}  # the tiny kernels get sharded too
    loop.train_and_evaluate(
        tiny_config(arg=RUN, batch_size=8, num_epochs=0.5, **small_shards), workdir
    )
    one_device_print = evaluation.evaluate_checkpoint(workdir)['params_fingerprint']

    output = run_with_devices(f'''
        import json, sys
        sys.path.insert(0, 'tests')
        import jax, tiny_config
        from sparse_vit_jax.train import evaluation, loop, restore, report, sharding
        assert jax.device_count() == 8
        found = {{}}
        c = tiny_config.get_config('data_dir={tiny_data_dir},{RUN}')
        c.batch_size, c.num_epochs = 8, 1.0
        c.mesh.fsdp, c.mesh.fsdp_min_size = 4, 256
        # 1 -> 8: onto a 2x4 FSDP mesh, kernels really sharded, the same weights.
        restored = restore.restore_model('{workdir}', mesh=sharding.make_mesh(c.mesh))
        kernel = restored.params['blocks_0']['mlp']['fc1']['kernel']
        found['sharded'] = str(kernel.sharding.spec)
        found['one_device'] = report.params_fingerprint(restored.params, restored.masks)
        # ... and resumes there to the end (a longer run: the change is allowed and recorded).
        found['resumed_step'] = loop.train_and_evaluate(c, '{workdir}', allow_config_change=True)['step']
        found['written'] = evaluation.evaluate_checkpoint('{workdir}')
        print(json.dumps(found))
    ''')
    found = json.loads(output.strip().splitlines()[-1])
    assert found['one_device'] == one_device_print  # 1 -> 8 restores the same weights
    assert 'fsdp' in found['sharded'] and found['resumed_step'] == 4

    # 8 (FSDP 2x4) -> 1: evaluation, export, plots and the benchmark all restore it.
    assert jax.device_count() == 1
    written = found['written']
    report = evaluation.evaluate_checkpoint(workdir)
    assert report['step'] == 4
    assert report['params_fingerprint'] == written['params_fingerprint']
    assert np.isclose(report['loss'], written['loss'], rtol=1e-5)
    assert report['top1'] == written['top1']
    assert restore.restore_model(workdir).mesh.devices.size == 1
    exported = export_slim(workdir, str(tmp_path / 'slim'))
    assert exported['num_params'] < exported['source_num_params']
    assert render_tokens(workdir, str(tmp_path / 'plots'), num_images=2)
    speed = checkpoint_speed(workdir, batch=2, steps=2, warmup=1)
    assert speed['step'] == 4 and speed['images_per_sec'] > 0
