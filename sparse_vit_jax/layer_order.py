"""How a ViT's param tree names and orders its layers, for everything that walks or lists them.

A layer is named by its path joined with '/' ('blocks_0/attn/qkv/kernel'). Paths sort as text
('blocks_0', 'blocks_1', 'blocks_10', ...); the model computes, and people read, the patch
embedding first, blocks by depth, head last.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Mapping, TypeVar

import jax

Value = TypeVar('Value')

_BLOCK = 'blocks_'
# Sub-layers in the order a block computes them (alphabetical order would put proj before qkv).
_SUBLAYERS = ('attn/qkv', 'attn/proj', 'mlp/fc1', 'mlp/fc2')


def _path_part(entry: Any) -> str:
    """A path component as a string; accepts jax key-path entries (DictKey, GetAttrKey, ...)."""
    for attribute in ('key', 'name', 'idx'):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def path_name(path: Iterable[Any]) -> str:
    """The '/'-joined layer name of a path (of strings or jax key-path entries)."""
    return '/'.join(_path_part(p) for p in path)


def named_leaves(tree: Any) -> dict[str, Any]:
    """{layer name: leaf} of every leaf of a pytree (None leaves are no leaves)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(path): leaf for path, leaf in leaves}


def block_index(name: str) -> int | None:
    """The depth of block 'blocks_<i>' (a name's first path part), None for other names."""
    first = name.partition('/')[0]
    digits = first[len(_BLOCK) :]
    return int(digits) if first.startswith(_BLOCK) and digits.isdigit() else None


def block_names(tree: Mapping[str, Any]) -> list[str]:
    """The top-level 'blocks_<i>' keys of a param tree in depth order (blocks_10 after blocks_9)."""
    return sorted((name for name in tree if block_index(name) is not None), key=block_index)


def layer_sort_key(name: str) -> tuple[int, int, int, str]:
    """Model order for layer names ('patch_embed/kernel', 'blocks_10/mlp/fc1/kernel', 'head/
    kernel', ...): patch embedding, blocks by depth (not blocks_10 before blocks_2), head."""
    first, _, rest = name.partition('/')
    depth = block_index(first)
    if depth is not None:
        sub = next((i for i, s in enumerate(_SUBLAYERS) if rest.startswith(s)), len(_SUBLAYERS))
        return (1, depth, sub, rest)
    group = {'patch_embed': 0, 'head': 3}.get(first, 2)
    return (group, 0, 0, name)


def in_model_order(by_layer: Mapping[str, Value]) -> dict[str, Value]:
    """The same {layer name: value}, keyed in model order (JSON and printing keep it)."""
    return {name: by_layer[name] for name in sorted(by_layer, key=layer_sort_key)}
