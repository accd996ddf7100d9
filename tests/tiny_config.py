"""A run config for tests: the tiny TFDS dataset (16×16 RGB, 37/23 examples) and 'vit_test'.

    python tools/train.py --config tests/tiny_config.py:data_dir=/tmp/tfds,method=svite ...

Args: data_dir (where the 'tiny_images' TFDS dataset was written, see tests/conftest.py), and
every arg of configs/fashion_mnist.py.
"""

from sparse_vit_jax import config as config_lib


def get_config(arg: str | None = None):
    items = [item for item in (arg or '').split(',') if item]
    data_dir = [i.split('=', 1)[1] for i in items if i.startswith('data_dir=')]
    fashion_args = ','.join(i for i in items if not i.startswith('data_dir='))
    c = config_lib.load(f'configs/fashion_mnist.py:{fashion_args}')
    c.model = config_lib.model_config('vit_test')
    c.data.update(
        dict(
            name='tiny_images',
            data_dir=data_dir[0] if data_dir else None,
            shuffle_buffer=64,
            eval_batch_size=8,
            mean=(0.3,) * 3,
            std=(0.3,) * 3,
        )
    )
    c.batch_size = 4
    c.num_epochs = 1.0
    c.log_every_steps = 3
    c.checkpoint_every_steps = 3
    c.eval_every_epochs = 100.0
    c.optimizer.warmup_epochs = 0.2
    return c
