"""Counts print in the prefix their size calls for (tools/flops.py, tools/benchmark.py)."""

from sparse_vit_jax import units


def test_prefix_follows_the_size():
    assert units.quantity(2.43e6, 'MACs') == '2.43 MMACs'  # once printed as '0.002 GMACs'
    assert units.quantity(4.599e9, 'MACs') == '4.6 GMACs'
    assert units.quantity(17.564e9, 'MACs', digits=5) == '17.564 GMACs'
    assert units.quantity(512, 'images') == '512 images'
    assert units.quantity(1e3, 'B') == '1 kB'


def test_values_side_by_side_share_the_prefix_of_like():
    assert units.quantity(0.9e6, 'MACs', like=2.43e6) == '0.9 MMACs'
    assert units.quantity(2.43e6, 'FLOPs', like=1.2e9) == '0.00243 GFLOPs'
