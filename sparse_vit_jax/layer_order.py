"""The order of a ViT's layers as the model computes them, for everything that lists layers.

Param-tree paths sort as text ('blocks_0', 'blocks_1', 'blocks_10', ...); people read a model
patch embedding first, blocks by depth, head last.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

Value = TypeVar('Value')

# Sub-layers in the order a block computes them (alphabetical order would put proj before qkv).
_SUBLAYERS = ('attn/qkv', 'attn/proj', 'mlp/fc1', 'mlp/fc2')


def layer_sort_key(name: str) -> tuple[int, int, int, str]:
    """Model order for layer names ('patch_embed/kernel', 'blocks_10/mlp/fc1/kernel', 'head/
    kernel', ...): patch embedding, blocks by depth (not blocks_10 before blocks_2), head."""
    first, _, rest = name.partition('/')
    if first.startswith('blocks_') and first[len('blocks_') :].isdigit():
        sub = next((i for i, s in enumerate(_SUBLAYERS) if rest.startswith(s)), len(_SUBLAYERS))
        return (1, int(first.split('_')[1]), sub, rest)
    group = {'patch_embed': 0, 'head': 3}.get(first, 2)
    return (group, 0, 0, name)


def in_model_order(by_layer: Mapping[str, Value]) -> dict[str, Value]:
    """The same {layer name: value}, keyed in model order (JSON and printing keep it)."""
    return {name: by_layer[name] for name in sorted(by_layer, key=layer_sort_key)}
