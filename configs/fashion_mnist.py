"""The embedded default: a small ViT on Fashion-MNIST (28×28 grayscale, 10 classes), CPU-sized.

    python tools/train.py --config configs/fashion_mnist.py --workdir runs/fashion
    python tools/train.py --config configs/fashion_mnist.py:epochs=5 --workdir runs/quick

Args: method=dense (the methods arrive with their issues), epochs, batch.
"""

from sparse_vit_jax import config as config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, method='dense', epochs=15.0, batch=128)
    c = config_lib.base_config()
    c.model = config_lib.model_config('vit_fashion')
    c.data.update(
        dict(
            name='fashion_mnist',
            train_split='train',
            eval_split='test',
            recipe='small_images',
            shuffle_buffer=60_000,
            repeats=1,
            eval_batch_size=1000,
            mean=(0.2860,),
            std=(0.3530,),
            augment=dict(crop_padding=2, flip=True, randaugment='', reprob=0.0, crop_pct=1.0),
        )
    )
    c.batch_size = arg.batch
    c.num_epochs = arg.epochs
    # Small data trains best at a higher lr with a short warmup (ENVIRONMENT.md §8).
    c.optimizer.update(
        dict(
            lr=2e-3,
            lr_base_batch=arg.batch,
            weight_decay=0.05,
            warmup_epochs=0.3,
            warmup_lr=1e-6,
            min_lr=1e-5,
        )
    )
    c.mixup.update(dict(mixup_alpha=0.0, cutmix_alpha=0.0, prob=0.0))
    c.sparsity.method = arg.method
    c.log_every_steps = 100
    c.eval_every_epochs = 5.0
    c.checkpoint_every_steps = 2000
    return c
