"""The model, sparsity, train step and benchmark import and run without TensorFlow (accelerator
hosts may have JAX and no TensorFlow): checked in a fresh Python where importing tensorflow or
tensorflow_datasets fails."""

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCK_TENSORFLOW = '''
import importlib.abc, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
            raise ImportError(f'{name} is blocked: this host has no TensorFlow')

sys.meta_path.insert(0, NoTensorFlow())
'''


def _run(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, '-c', BLOCK_TENSORFLOW + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2'),
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result.stdout


TINY = ['--config.model.' + field for field in (
    'name=vit_test', 'num_classes=10', 'image_size=16', 'patch_size=4', 'embed_dim=32',
    'depth=2', 'num_heads=4', 'mlp_dim=64',
)]


def test_model_sparsity_train_step_and_benchmark_run_without_tensorflow():
    out = _run(
        f'''
        import json, runpy, sys
        import sparse_vit_jax.models, sparse_vit_jax.sparsity.state, sparse_vit_jax.train.steps
        import sparse_vit_jax.flops
        from sparse_vit_jax import config as config_lib
        from sparse_vit_jax.benchmark import jax_bench

        # the benchmark tool as a GPU host runs it: XLA's memory analysis of an S²ViTE step
        sys.argv = ['benchmark.py', 'memory', '--config', 'configs/s2vite.py:model=deit_tiny',
                    '--batch', '4', '--json', *{TINY!r}]
        try:
            runpy.run_path('tools/benchmark.py', run_name='__main__')
        except SystemExit as exit:
            assert not exit.code, exit.code
        # and a real SViTE train step, built as the Trainer builds it
        config = config_lib.base_config()
        config.model = config_lib.model_config('vit_test')
        config.sparsity.method, config.sparsity.density, config.batch_size = 'svite', 0.5, 4
        bench = jax_bench.TrainBench(config)
        bench.step(bench.count(0))
        print(json.dumps({{'loss': float(bench.metrics['loss'])}}))
        assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules
        '''
    )
    memory, train = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
    assert memory['mode'] == 'memory' and memory['config_method'] == 's2vite'
    assert memory['mesh'] == {'data': 2, 'fsdp': 1}
    assert memory['bytes_per_device']['peak_estimate'] > memory['bytes_per_device']['argument']
    assert 0 < train['loss'] < 10
