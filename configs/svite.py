"""SViTE: unstructured sparse DeiT on ImageNet at a fixed parameter budget (paper Table 1).

    python tools/train.py --config configs/svite.py:model=deit_small,density=0.5 --workdir runs/svite_s

Settings as the official scripts: 600 epochs, ERK initial distribution, magnitude prune,
gradient grow, prune rate cosine 0.5 → 0.005, ΔT = 15000 (Tiny/Small, global batch 512) or
7000 (Base, global batch 1024) rescaled to the run's batch, updates until t_end = 0.8.

Published top-1 (docs/reference.md §7): SViTE-Base density 0.6 ("40% sparse") 81.56 (released
checkpoint); SViTE-Small density 0.5 ≈ 79.7 (read off the repository figure). Dense DeiT
references: Tiny 72.2, Small 79.8, Base 81.8.
Args: model, density, fidelity=reference|improved, epochs, batch (global; 0 = the paper's, with
ΔT and the lr rescaled to it), seed.
"""

from sparse_vit_jax import config as config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(
        arg, **config_lib.IMAGENET_ARGS, density=0.5, fidelity='reference'
    )
    c = config_lib.imagenet_config(arg.model, epochs=arg.epochs, batch=arg.batch, seed=arg.seed)
    config_lib.set_method(c, 'svite', fidelity=arg.fidelity, density=arg.density)
    return c
