"""Sparsify a trained model in a short run: "make my DeiT-S 50% sparse in 30 epochs".

    python tools/train.py --workdir runs/deit_s_sparse --config \\
        configs/finetune.py:init_from=deit_small_patch16_224.safetensors,density=0.5,epochs=30
    python tools/train.py --workdir runs/mine_sparse --config \\
        configs/finetune.py:init_from=runs/mine,data=folder,data_dir=my_images,classes=5,...

The run starts from `init_from` (a timm .safetensors/.npz/.pth file, or a workdir of ours,
optionally WORKDIR:STEP) with magnitude masks: each layer keeps its largest weights (S²ViTE: the
heads and neurons with the largest pruning scores), at the counts the method's ERK or uniform
distribution gives. The recipe is `base`'s (the paper's 600-epoch ImageNet recipe, or the
embedded Fashion-MNIST one) compressed into `epochs` by config.compress_schedule: ΔT and the
warmup scale with the length (as many topology updates as the full run), the prune rate still
decays to t_end = 0.8 of the run, and the peak lr is the recipe's times `lr_scale`.

Args:
  init_from: the trained weights (required to start; a resumed run ignores it).
  epochs: length of the sparsifying run. lr_scale: peak lr relative to the recipe's.
  base: svite | s2vite | sviteplus (the paper's ImageNet configs) | fashion_mnist; every other
    arg goes to that config (e.g. model=deit_small, density=0.5, head_density=0.7, method=...).
  data, data_dir, train_split, eval_split: the dataset (a TFDS name, or `folder` for an image
    folder at data_dir); classes: its class count (a different head is re-initialized).
"""

import os

from sparse_vit_jax import config as config_lib

BASES = ('svite', 's2vite', 'sviteplus', 'fashion_mnist')
OWN = dict(
    init_from='',
    epochs=30.0,
    lr_scale=1.0,
    base='svite',
    data='',
    data_dir='',
    train_split='',
    eval_split='',
    classes=0,
)


def _base_config(name: str, arg: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.py')
    return config_lib.config_file(path).get_config(arg)


def get_config(arg: str | None = None):
    items = [item for item in (arg or '').split(',') if item]
    own = [item for item in items if item.partition('=')[0].strip() in OWN]
    rest = [item for item in items if item not in own]
    args = config_lib.parse_arg(','.join(own), **OWN)
    if args.base not in BASES:
        raise ValueError(f'config arg base={args.base!r}; choose one of {BASES}')
    c = _base_config(args.base, ','.join(rest))
    config_lib.compress_schedule(c, args.epochs, args.lr_scale)
    c.init_from = args.init_from or None
    for field in ('data_dir', 'train_split', 'eval_split'):
        if getattr(args, field):
            c.data[field] = getattr(args, field)
    if args.data:
        c.data.name = args.data
    if args.classes:
        c.model.num_classes = args.classes
    return c
