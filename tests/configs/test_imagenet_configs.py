"""The ImageNet configs take the same short-run args, and validation refuses a batch that Mixup
or the devices cannot split before the run reads any data or compiles anything."""

import jax
import pytest

from sparse_vit_jax import config as config_lib
from sparse_vit_jax.data.pipeline import DatasetNotPreparedError, load_builder
from sparse_vit_jax.layer_order import in_model_order
from sparse_vit_jax.train import loop

IMAGENET_CONFIGS = ('dense', 'svite', 's2vite', 'sviteplus')


def _config(name, arg):
    return config_lib.load(f'configs/{name}.py:{arg}')


@pytest.mark.parametrize('name', IMAGENET_CONFIGS)
def test_every_imagenet_config_takes_the_short_run_args(name):
    c = _config(name, 'model=deit_tiny,epochs=0.5,batch=6,seed=3')
    config_lib.validate(c)
    assert (c.num_epochs, c.batch_size, c.seed, c.data.eval_batch_size) == (0.5, 6, 3, 6)
    # The recipe rescales from the paper's batch: lr 5e-4·6/512, ΔT 15000·512/6 steps.
    assert (c.optimizer.lr, c.optimizer.lr_base_batch) == (5e-4, 512)
    assert (c.sparsity.update_every, c.sparsity.update_every_batch) == (15_000, 512)
    paper = _config(name, 'model=deit_base')
    assert (paper.batch_size, paper.data.eval_batch_size) == (1024, 1536)
    assert paper.num_epochs == (300.0 if name == 'dense' else 600.0)


def _trainer_error(config, tmp_path):
    with pytest.raises(ValueError) as error:
        loop.Trainer(config, str(tmp_path / 'run'))
    return str(error.value)


def test_odd_batch_with_mixup_is_refused_before_any_data_work(tmp_path):
    c = _config('svite', 'model=deit_tiny,batch=7')
    c.data.data_dir = str(tmp_path / 'never_prepared')  # reading data would fail differently
    message = _trainer_error(c, tmp_path)
    assert message.startswith('config.batch_size=7 is odd') and 'e.g. 8' in message
    assert '--config.mixup.prob=0' in message
    c.mixup.prob = 0.0  # without mixing an odd batch is fine
    config_lib.validate(c)


def test_batch_the_devices_cannot_split_is_refused_before_any_data_work(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, 'device_count', lambda: 8)  # the arithmetic of an 8-chip host
    c = _config('dense', 'model=deit_tiny,batch=12')
    c.data.data_dir = str(tmp_path / 'never_prepared')
    assert 'config.batch_size=12 does not divide evenly over 8 devices' in _trainer_error(
        c, tmp_path
    )
    c.batch_size = 16  # the eval batch (12) is checked as well
    assert 'config.data.eval_batch_size=12 does not' in _trainer_error(c, tmp_path)


def test_imagenet_not_prepared_names_the_manual_dir_flag(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as error:
        load_builder('imagenet2012', str(tmp_path))
    message = str(error.value)
    assert 'tools/prepare_data.py imagenet2012 --manual_dir' in message
    assert f'--data_dir {tmp_path}' in message and 'Smoke-test the ImageNet path' in message


def test_layers_are_listed_in_model_order():
    names = [
        'head/kernel',
        'blocks_10/mlp/fc1/kernel',
        'blocks_2/attn/proj/kernel',
        'blocks_2/attn/qkv/kernel',
        'patch_embed/kernel',
        'blocks_1/mlp/fc2/kernel',
    ]
    assert list(in_model_order({n: 0 for n in names})) == [
        'patch_embed/kernel',
        'blocks_1/mlp/fc2/kernel',
        'blocks_2/attn/qkv/kernel',
        'blocks_2/attn/proj/kernel',
        'blocks_10/mlp/fc1/kernel',
        'head/kernel',
    ]
