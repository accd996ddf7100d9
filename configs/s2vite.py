"""S²ViTE on ImageNet: structured (head + MLP neuron) sparse DeiT training, as in the paper.

    python tools/train.py --workdir runs/s2vite_s_70_60 \
        --config configs/s2vite.py:model=deit_small,head_density=0.7,neuron_density=0.6
    python tools/export.py --format slim --workdir runs/s2vite_s_70_60 --out runs/s2vite_slim

Args:
  model: deit_tiny | deit_small | deit_base.
  head_density: kept fraction of attention heads per block (atten_density in the official code).
  neuron_density: kept fraction of MLP hidden neurons per block (other_density).
  fidelity: reference (the official code's decisions; pruned heads still emit their v-bias) |
    improved (see README).
  epochs (600), batch (global; 0 = the paper's), seed.

The recipe is the official scripts' (docs/reference.md §5.5): the DeiT recipe for 600 epochs,
ΔT = 15000 steps at global batch 512 for Tiny and Small, and for Base global batch 1024, lr
5e-4·1024/512 = 1e-3 (via lr_base_batch) and ΔT = 7000 at batch 1024; topology updates until
t_end = 0.8 of the run. ΔT and the lr rescale with the batch (update_every_batch, lr_base_batch).

The paper's (head_density, neuron_density) pairs and the units kept per block, int(H·d) heads
and int(mlp·d) neurons (docs/reference.md §3.1; 0.7/0.6 is the "40% structured" released Base
model):

  | pair       | heads Tiny / Small / Base | neurons Tiny / Small / Base |
  |------------|---------------------------|-----------------------------|
  | (0.7, 0.7) | 2 / 4 / 8                 | 537 / 1075 / 2150           |
  | (0.7, 0.6) | 2 / 4 / 8                 | 460 / 921 / 1843            |
  | (0.5, 0.5) | 1 / 3 / 6                 | 384 / 768 / 1536            |
  | (0.4, 0.4) | 1 / 2 / 4                 | 307 / 614 / 1228            |
  | (0.4, 0.3) | 1 / 2 / 4                 | 230 / 460 / 921             |

(Tiny has 3 heads and 768 neurons per block, Small 6 and 1536, Base 12 and 3072.)
"""

from sparse_vit_jax import config as config_lib

PAPER_PAIRS = ((0.7, 0.7), (0.7, 0.6), (0.5, 0.5), (0.4, 0.4), (0.4, 0.3))


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(
        arg,
        **config_lib.IMAGENET_ARGS,
        head_density=0.7,
        neuron_density=0.6,
        fidelity='reference',
    )
    c = config_lib.imagenet_config(arg.model, epochs=arg.epochs, batch=arg.batch, seed=arg.seed)
    config_lib.set_method(
        c,
        's2vite',
        fidelity=arg.fidelity,
        head_density=arg.head_density,
        neuron_density=arg.neuron_density,
    )
    return c
