"""What a checkpoint holds, in numbers: parameter counts, per-layer densities, a fingerprint."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from sparse_vit_jax.layer_order import in_model_order, named_leaves
from sparse_vit_jax.sparsity import masks as masks_lib
from sparse_vit_jax.sparsity.state import apply_weight_masks


def _named_leaves(tree: Any) -> list[tuple[str, np.ndarray]]:
    return sorted((name, np.asarray(leaf)) for name, leaf in named_leaves(tree).items())


def params_fingerprint(params: Any, masks: Any = None) -> str:
    """SHA-256 over every param (and mask) leaf in sorted path order: name, dtype, shape, bytes.

    Equal fingerprints mean bit-identical weights, so two runs can be compared exactly.
    """
    digest = hashlib.sha256()
    for prefix, tree in (('params', params), ('masks', masks)):
        for name, leaf in _named_leaves(tree):
            digest.update(f'{prefix}/{name}:{leaf.dtype.str}:{leaf.shape}'.encode())
            digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def describe(params: Any, masks: dict | None) -> dict[str, Any]:
    """Parameter counts and the density of every masked layer (in model order) /
    structured unit set.

    `nonzero_params` counts what the model uses: nonzero params outside the weight masks (the
    gated units of improved S²ViTE keep frozen weights that their gates silence).
    """
    counts = [leaf.size for _, leaf in _named_leaves(params)]
    if masks is not None and masks.get('weights') is not None:
        params = apply_weight_masks(params, masks['weights'])
    nonzero = [int(np.count_nonzero(leaf)) for _, leaf in _named_leaves(params)]
    report: dict[str, Any] = {'num_params': int(sum(counts)), 'nonzero_params': int(sum(nonzero))}
    if masks is None:
        return report
    if masks.get('weights') is not None:
        report['layer_density'] = in_model_order(masks_lib.weight_density_stats(masks['weights']))
        report['density'] = masks_lib.overall_weight_density(masks['weights'])
    for unit in ('heads', 'neurons'):
        if masks.get(unit) is not None:
            report[f'active_{unit}'] = np.asarray(masks[unit]).sum(axis=1).tolist()
    return report
