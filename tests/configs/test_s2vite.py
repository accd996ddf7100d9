"""configs/s2vite.py: every paper pair builds, validates and keeps the documented unit counts."""

import jax
import numpy as np
import pytest

from sparse_vit_jax import config as config_lib
from sparse_vit_jax.sparsity import masks as masks_lib
from sparse_vit_jax.sparsity import schedules
from sparse_vit_jax.train import optimizer as optimizer_lib


S2VITE = config_lib.config_file('configs/s2vite.py')


def s2vite(arg):
    return config_lib.load(f'configs/s2vite.py:{arg}')


# docs/reference.md §3.1, written out by hand: (heads, neurons) kept per block.
KEPT = {
    (0.7, 0.7): {'deit_tiny': (2, 537), 'deit_small': (4, 1075), 'deit_base': (8, 2150)},
    (0.7, 0.6): {'deit_tiny': (2, 460), 'deit_small': (4, 921), 'deit_base': (8, 1843)},
    (0.5, 0.5): {'deit_tiny': (1, 384), 'deit_small': (3, 768), 'deit_base': (6, 1536)},
    (0.4, 0.4): {'deit_tiny': (1, 307), 'deit_small': (2, 614), 'deit_base': (4, 1228)},
    (0.4, 0.3): {'deit_tiny': (1, 230), 'deit_small': (2, 460), 'deit_base': (4, 921)},
}


def test_docstring_table_is_the_reference_table():
    assert tuple(KEPT) == S2VITE.PAPER_PAIRS
    lines = S2VITE.__doc__.splitlines()
    for (heads, neurons), kept in KEPT.items():
        (row,) = [line for line in lines if f'| ({heads}, {neurons}) |' in line]
        sizes = ('deit_tiny', 'deit_small', 'deit_base')
        assert ' / '.join(str(kept[m][0]) for m in sizes) in row
        assert ' / '.join(str(kept[m][1]) for m in sizes) in row


@pytest.mark.parametrize('model', ['deit_tiny', 'deit_small', 'deit_base'])
@pytest.mark.parametrize('pair', S2VITE.PAPER_PAIRS)
def test_paper_pairs_build_validate_and_keep_the_documented_units(model, pair):
    head_density, neuron_density = pair
    c = s2vite(f'model={model},head_density={head_density},neuron_density={neuron_density}')
    config_lib.validate(c)
    assert c.sparsity.method == 's2vite' and c.sparsity.fidelity == 'reference'
    assert (c.sparsity.head_density, c.sparsity.neuron_density) == pair
    kept = (
        int(c.model.num_heads * c.sparsity.head_density),
        int(c.model.mlp_dim * c.sparsity.neuron_density),
    )
    assert kept == KEPT[pair][model]


@pytest.mark.parametrize('model', ['deit_tiny', 'deit_small', 'deit_base'])
def test_training_draws_the_documented_unit_counts(model):
    """The run's initial masks (what the sparse transformation draws) keep those counts."""
    c = s2vite(f'model={model},head_density=0.7,neuron_density=0.6')
    key = jax.random.key(0)
    heads = masks_lib.random_unit_masks(key, 2, c.model.num_heads, c.sparsity.head_density)
    neurons = masks_lib.random_unit_masks(key, 2, c.model.mlp_dim, c.sparsity.neuron_density)
    np.testing.assert_array_equal(heads.sum(1), KEPT[(0.7, 0.6)][model][0])
    np.testing.assert_array_equal(neurons.sum(1), KEPT[(0.7, 0.6)][model][1])


@pytest.mark.parametrize(
    'model, batch, update_every, peak_lr',
    [
        ('deit_tiny', 512, 15_000, 5e-4),
        ('deit_small', 512, 15_000, 5e-4),
        ('deit_base', 1024, 7_000, 1e-3),
    ],
)
def test_recipe_per_model(model, batch, update_every, peak_lr):
    c = s2vite(f'model={model}')
    assert c.model.name == f'{model}_patch16_224' and c.batch_size == batch
    assert c.num_epochs == 600 and c.sparsity.t_end == 0.8
    assert optimizer_lib.peak_learning_rate(c.optimizer, c.batch_size) == pytest.approx(peak_lr)
    s = c.sparsity
    assert schedules.scale_update_every(s.update_every, s.update_every_batch, batch) == update_every
    # Half the global batch: ΔT doubles (same examples between updates), the lr halves.
    assert schedules.scale_update_every(s.update_every, s.update_every_batch, batch // 2) == (
        2 * update_every
    )
    assert c.data.eval_batch_size == batch * 3 // 2


def test_args_are_typed_and_checked():
    c = s2vite('model=deit_tiny,fidelity=improved,seed=3,head_density=1')
    assert c.sparsity.fidelity == 'improved' and c.seed == 3 and c.sparsity.head_density == 1.0
    config_lib.validate(c)
    with pytest.raises(ValueError, match='choose one of'):
        s2vite('model=vit_test')
    with pytest.raises(ValueError, match='unknown config arg'):
        s2vite('density=0.5')
    with pytest.raises(ValueError, match='is not a valid float'):
        s2vite('head_density=high')
    with pytest.raises(ValueError, match='keeps int'):
        config_lib.validate(s2vite('model=deit_tiny,head_density=0.3'))
