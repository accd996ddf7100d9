"""bf16 compute with fp32 params (the TPU/GPU setting) runs the same step on CPU."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparse_vit_jax.models import create_model
from sparse_vit_jax.train.state import create_train_state
from sparse_vit_jax.train.steps import TrainStep


def test_bfloat16_compute_keeps_float32_params_and_learns():
    model = create_model('vit_test', dtype=jnp.bfloat16)
    tx = optax.adamw(2e-3, weight_decay=0.0)
    state = create_train_state(model, tx, jax.random.key(0), (16, 16, 3))
    step = jax.jit(TrainStep(model, tx, seed=0, num_classes=10, label_smoothing=0.0))
    batch = {
        'image': jax.random.normal(jax.random.key(1), (16, 16, 16, 3)),
        'label': jnp.arange(16) % 10,
    }
    logits = model.apply({'params': state.params}, batch['image'])
    assert logits.dtype == jnp.float32  # the loss is computed in float32
    first = None
    for _ in range(60):
        state, metrics = step(state, batch)
        first = first if first is not None else float(metrics['loss'])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    assert float(metrics['loss']) < 0.5 * first
    fp32 = create_model('vit_test').apply({'params': state.params}, batch['image'])
    bf16 = model.apply({'params': state.params}, batch['image'])
    assert np.max(np.abs(fp32 - bf16)) < 0.1 * np.max(np.abs(fp32))  # same function, bf16 rounding


def test_head_scores_are_float32_sums_under_bfloat16_compute():
    """S²ViTE ranks heads by these scores: bfloat16 products and sums (8 significant bits)
    would be ~1e-2 off and tie near-equal heads; float32 keeps them to ~1e-6."""
    from sparse_vit_jax.train.steps import head_scores

    keys = jax.random.split(jax.random.key(0), 2)
    outputs = [(1 + jax.random.normal(keys[0], (8, 17, 4, 8))).astype(jnp.bfloat16)]
    grads = [jax.random.normal(keys[1], (8, 17, 4, 8)).astype(jnp.bfloat16)]
    scores = head_scores(outputs, grads)
    a, g = (np.asarray(x[0], np.float64) for x in (outputs, grads))
    expected = {
        'head_taylor': np.abs((a * g).sum(axis=(1, 3))).mean(0),
        'head_grad_norm': np.abs(g).sum(axis=(1, 3)).mean(0),
    }
    for name, value in expected.items():
        assert scores[name].dtype == jnp.float32, name
        np.testing.assert_allclose(scores[name][0], value, rtol=1e-5)


FSDP_GATHERS = '''
import glob, json, os, re
from sparse_vit_jax import config as config_lib
from sparse_vit_jax.benchmark import jax_bench

config = config_lib.base_config()
config.model = config_lib.model_config('vit_test', remat='block')
config.model.dtype = 'bfloat16'
config.mesh.fsdp, config.mesh.fsdp_min_size, config.batch_size = 8, 0, 16
program = jax_bench.TrainProgram(config)
# the program as the SPMD partitioner wrote it (later CPU passes widen bfloat16 to float32)
text = open(glob.glob(os.environ['DUMP'] + '/*after_spmd-partitioning*')[0]).read()
gathers = re.findall(r'= (\\w+)\\[([\\d,]*)\\]\\S* all-gather(?:-start)?\\(', text)
print(json.dumps(gathers))
'''


def test_fsdp_gathers_weights_in_bfloat16_under_bfloat16_compute(run_with_devices, tmp_path):
    """FSDP under bfloat16 compute moves half the bytes: every weight matrix is all-gathered
    after its cast to bfloat16 (the float32 master copy stays sharded), also where remat
    recomputes a block in the backward pass."""
    code = f'import os\nos.environ["DUMP"] = {str(tmp_path)!r}\n' + FSDP_GATHERS
    flags = f'--xla_dump_to={tmp_path} --xla_dump_hlo_pass_re=spmd-partitioning'
    output = run_with_devices(code, xla_flags=flags)
    gathers = {tuple(g) for g in json.loads(output.strip().splitlines()[-1])}
    kernels = {'32,96', '32,32', '32,64', '64,32', '4,4,3,32', '32,10'}  # qkv proj fc1 fc2 patch head
    assert {shape for dtype, shape in gathers if dtype == 'bf16'} >= kernels
    assert not {shape for dtype, shape in gathers if dtype == 'f32'} & kernels
