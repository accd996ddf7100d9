"""Dense DeiT on ImageNet with the DeiT recipe (the paper's baselines; docs/reference.md §5).

    python tools/train.py --config configs/dense.py:model=deit_small --workdir runs/deit_s

Args: model=deit_tiny|deit_small|deit_base, epochs (the SViTE runs use 600; DeiT used 300),
batch (global; 0 = the paper's: 512 for Tiny/Small, 1024 for Base; the lr scales with it), seed.
Expected top-1 (official DeiT, 300 epochs): Tiny 72.2, Small 79.8, Base 81.8.
"""

from sparse_vit_jax import config as config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, **dict(config_lib.IMAGENET_ARGS, epochs=300.0))
    return config_lib.imagenet_config(
        arg.model, epochs=arg.epochs, batch=arg.batch, seed=arg.seed
    )
