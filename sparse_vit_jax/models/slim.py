"""Slim S²ViTE networks: the physically smaller dense model equal to a head/neuron-masked one.

An S²ViTE run ends with a full-size model whose pruned heads and neurons are masked. The slim
model keeps, per block, only the active heads (their q/k/v columns of the fused qkv kernel and
bias, and their rows of the proj kernel) and the active neurons (fc1 columns and bias entries,
fc2 rows), so its shapes differ per block (``num_heads``/``mlp_dim`` tuples, explicit
``head_dim``). It computes the same function as the masked model, in either fidelity:

- 'improved': pruned heads and neurons are gated to 0 in the forward pass, so they contribute
  nothing and are simply dropped (with the frozen weights they keep for regrowth).
- 'reference': there are no gates (docs/reference.md §3.4). A pruned head's k and v kernel columns
  are 0, so its keys are the constant b_k (uniform attention) and its values the constant b_v: it
  emits b_v for every token, which the dense proj turns into the constant b_v,h · W_proj[h rows].
  That constant is folded into proj.bias. A pruned neuron's fc2 row is 0, so it contributes
  nothing whatever GELU(b1_j) is. Both zero facts are checked, not assumed: if they do not hold
  the masked model is not what the fold assumes and the export refuses.

Everything here runs on host NumPy arrays (the kept indices decide the output shapes, so none of
it could be jitted anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from sparse_vit_jax.layer_order import block_names
from sparse_vit_jax.sparsity.state import FIDELITIES


def unit_masks(masks: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """The (heads [depth, H], neurons [depth, mlp]) bool masks of a structured run.

    Raises ValueError when either is missing (a dense or unstructured SViTE run).
    """
    heads = None if masks is None else masks.get('heads')
    neurons = None if masks is None else masks.get('neurons')
    if heads is None or neurons is None:
        raise ValueError(
            'this run has no head/neuron masks; slim export needs an S²ViTE run (method=s2vite)'
        )
    return np.asarray(heads, bool), np.asarray(neurons, bool)


def kept_units(masks: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Active heads and active neurons per block."""
    heads, neurons = unit_masks(masks)
    return tuple(int(n) for n in heads.sum(1)), tuple(int(n) for n in neurons.sum(1))


def _slim_attention(
    attn: Mapping[str, Any], head_mask: np.ndarray, fidelity: str, head_dim: int, where: str
) -> dict[str, Any]:
    """qkv and proj of one block with only the active heads; the pruned heads' constant output
    folded into proj.bias in reference fidelity."""
    kernel = attn['qkv']['kernel']  # (D, 3·H·hd), columns [q | k | v] × heads × hd
    bias = attn['qkv']['bias']  # (3·H·hd,)
    proj_kernel = attn['proj']['kernel']  # (H·hd, D)
    proj_bias = attn['proj']['bias']  # (D,)
    heads = head_mask.shape[0]
    if kernel.shape[1] != 3 * heads * head_dim or proj_kernel.shape[0] != heads * head_dim:
        raise ValueError(
            f'{where}: qkv kernel {kernel.shape} / proj kernel {proj_kernel.shape} do not fit '
            f'{heads} heads of head_dim {head_dim}'
        )
    dim = kernel.shape[0]
    kernel = kernel.reshape(dim, 3, heads, head_dim)
    bias = bias.reshape(3, heads, head_dim)
    proj_kernel = proj_kernel.reshape(heads, head_dim, -1)
    kept, pruned = np.flatnonzero(head_mask), np.flatnonzero(~head_mask)
    if fidelity == 'reference' and pruned.size:
        # Uniform attention needs constant keys (k columns 0); a constant output b_v needs v
        # columns 0. q does not matter once the keys are constant.
        if np.any(kernel[:, 1:, pruned] != 0):
            bad = sorted({int(h) for h in pruned if np.any(kernel[:, 1:, h] != 0)})
            raise ValueError(
                f'{where}: pruned heads {bad} have nonzero k/v kernel columns, so in reference '
                'fidelity they do not emit the constant b_v that slim export folds into '
                'proj.bias (the zero invariant is broken)'
            )
        # Each pruned head emits b_v,h for every token; proj maps it to b_v,h · W_proj[h rows].
        folded = np.einsum(
            'hd,hdo->o',
            bias[2, pruned].astype(np.float64),
            proj_kernel[pruned].astype(np.float64),
        )
        proj_bias = (proj_bias.astype(np.float64) + folded).astype(proj_bias.dtype)
    inner = kept.size * head_dim
    return {
        **attn,  # everything besides qkv and proj as it is (the layer-wise token selector)
        'qkv': {
            'kernel': kernel[:, :, kept].reshape(dim, 3 * inner),
            'bias': bias[:, kept].reshape(3 * inner),
        },
        'proj': {'kernel': proj_kernel[kept].reshape(inner, -1), 'bias': proj_bias},
    }


def _slim_mlp(
    mlp: Mapping[str, Any], neuron_mask: np.ndarray, fidelity: str, where: str
) -> dict[str, Any]:
    """fc1 columns, fc1 bias entries and fc2 rows of the active neurons only."""
    fc1, fc2 = mlp['fc1'], mlp['fc2']
    if fc1['kernel'].shape[1] != neuron_mask.shape[0]:
        raise ValueError(
            f'{where}: fc1 kernel {fc1["kernel"].shape} does not fit {neuron_mask.shape[0]} neurons'
        )
    kept, pruned = np.flatnonzero(neuron_mask), np.flatnonzero(~neuron_mask)
    # Without gates a pruned neuron still outputs GELU(x·w1_j + b1_j); only a zero fc2 row makes
    # that irrelevant.
    if fidelity == 'reference' and np.any(fc2['kernel'][pruned] != 0):
        bad = [int(j) for j in pruned if np.any(fc2['kernel'][j] != 0)]
        raise ValueError(
            f'{where}: pruned neurons {bad[:10]} have nonzero fc2 rows, so in reference fidelity '
            'they still contribute (the zero invariant is broken)'
        )
    return {
        **mlp,
        'fc1': {'kernel': fc1['kernel'][:, kept], 'bias': fc1['bias'][kept]},
        'fc2': {'kernel': fc2['kernel'][kept], 'bias': fc2['bias']},
    }


def slim_params(
    params: Mapping[str, Any], masks: Mapping[str, Any], *, fidelity: str, head_dim: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The slim model's params and the model overrides that build it.

    Args:
      params: full-size params of a structured run (in reference fidelity with the zero
        invariant holding, as training keeps it; improved runs keep pruned units' weights).
      masks: {'heads': bool[depth, H], 'neurons': bool[depth, mlp], ...}; 'weights' is ignored
        (it derives from the unit masks).
      fidelity: the run's fidelity, i.e. how the masked model computes ('reference': no gates,
        pruned heads emit their v-bias; 'improved': pruned units gated to 0).
      head_dim: the full model's head width (the slim model cannot derive it from its heads).

    Returns:
      (params as host NumPy arrays, {'num_heads': tuple, 'mlp_dim': tuple, 'head_dim': int}).
      Pass the overrides to `create_model` (or `slim_model_config`) for the matching model.
    """
    if fidelity not in FIDELITIES:
        raise ValueError(f'fidelity must be one of {FIDELITIES}, got {fidelity!r}')
    heads, neurons = unit_masks(masks)
    params = jax.tree.map(np.asarray, dict(params))
    blocks = block_names(params)
    if heads.shape[0] != len(blocks) or neurons.shape[0] != len(blocks):
        raise ValueError(
            f'masks cover {heads.shape[0]} / {neurons.shape[0]} blocks, params have {len(blocks)}'
        )
    num_heads, mlp_dim = kept_units(masks)
    for name, h, m in zip(blocks, num_heads, mlp_dim):
        if h == 0 or m == 0:
            raise ValueError(
                f'{name} keeps {h} heads and {m} neurons; a slim block needs at least one of each '
                '(config validation keeps int(units·density) >= 1, so these masks are not from a '
                'valid run)'
            )
    slim = dict(params)
    for i, name in enumerate(blocks):
        block = dict(params[name])
        block['attn'] = _slim_attention(block['attn'], heads[i], fidelity, head_dim, name)
        block['mlp'] = _slim_mlp(block['mlp'], neurons[i], fidelity, name)
        slim[name] = block
    return slim, {'num_heads': num_heads, 'mlp_dim': mlp_dim, 'head_dim': int(head_dim)}


def slim_model_config(model_config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """A run config's `model` section for the slim model (per-layer tuples, explicit head_dim)."""
    config = dict(model_config.to_dict() if hasattr(model_config, 'to_dict') else model_config)
    depth = config['depth']
    for field in ('num_heads', 'mlp_dim'):
        values = tuple(int(v) for v in overrides[field])
        if len(values) != depth or min(values) < 1:
            raise ValueError(f'{field} must be {depth} positive ints, got {values}')
        config[field] = values
    config['head_dim'] = int(overrides['head_dim'])
    return config


def num_params(params: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
