"""timm / DeiT / SViTE state dicts <-> our Flax params, by renaming and transposing alone.

Our params follow timm's module tree (DESIGN.md, 'Data that flows'), so a name maps by rule:
``blocks.{i}.*`` <-> ``blocks_{i}/*``, ``patch_embed.proj`` <-> ``patch_embed``, a Linear or conv
``weight`` <-> ``kernel`` (Linear (out, in) <-> (in, out); conv OIHW <-> HWIO), a LayerNorm
``weight`` <-> ``scale``, ``bias`` <-> ``bias``; ``cls_token`` and ``pos_embed`` are unchanged.
The fused qkv needs no reordering: both sides lay its outputs out as [q | k | v] × heads × hd.

SViTE+ checkpoints name their token scorer ``gumbel`` (a Linear(D, 1)); it maps to
``token_selector/scorer/{kernel, bias}`` (``TOKEN_SELECTOR``) when the target model has one, and
the layer-wise scorers of the ``*_data`` models, ``blocks.{i}.attn.gumbel``, to
``blocks_{i}/attn/token_selector/scorer`` (a model built with ``keep_tokens`` and
``layerwise_tokens``; the keep count is not in the state dict, so it must be given).

Checking is done against the params the model initializes (``jax.eval_shape``, nothing is
computed), and every problem (missing keys, unexpected keys, wrong shapes) is reported in one
ValueError. No key inside a state dict is silently dropped: every tensor of a DeiT state dict is
used, and anything else (a distillation token, SViTE's layer-wise selectors, ...) describes a
different model. What is ignored is everything *beside* the state dict in a training checkpoint
(``optimizer``, ``lr_scheduler``, ``epoch``, ``args``, SViTE's ``mask``, ``model_ema``, ...).

Nothing here needs torch or timm; the files themselves are read and written by ``weights.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sparse_vit_jax.models import MODEL_CONFIGS, VisionTransformer, create_model

Params = dict[str, Any]
Path = tuple[str, ...]

# Where SViTE+'s `gumbel` Linear(D, 1) lives in our params.
TOKEN_SELECTOR: Path = ('token_selector', 'scorer')
# Keys under which training checkpoints (DeiT, SViTE) keep the model's state dict.
CHECKPOINT_KEYS = ('model', 'state_dict')
# Prefix DistributedDataParallel adds to every name when the wrapped model is saved.
DDP_PREFIX = 'module.'
# Why an unexpected key is not simply dropped: it belongs to a model we do not build.
_UNEXPECTED_NOTES = (
    (r'^(dist_token$|head_dist\.)', 'distilled DeiT (dist_token, head_dist) is not supported'),
    (r'^gumbel\.', 'SViTE+ token selector; this model has no token_selector/scorer'),
    (r'^blocks\.\d+\.attn\.gumbel\.', "layer-wise token selector of SViTE's *_data models"),
    (r'^(fc_norm|pre_logits)\.', 'not part of DeiT (average pooling / representation layer)'),
)
# timm's module order, so exports and error listings read like `print(model)`.
_ORDER = ('cls_token', 'pos_embed', 'patch_embed', 'gumbel', 'blocks', 'norm', 'head')
_BLOCK_ORDER = ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2')
_MAX_LISTED = 20


# ----------------------------------------------------------------------------- names and layouts


def timm_name(path: Path) -> tuple[str, str]:
    """The timm name of the Flax param at `path`, and its layout kind ('kernel' or 'same')."""
    *modules, leaf = path
    if tuple(modules[-2:]) == TOKEN_SELECTOR:  # input-level, or layer-wise in blocks_{i}/attn
        modules = [*modules[:-2], 'gumbel']
    if modules == ['patch_embed']:
        modules = ['patch_embed', 'proj']
    elif modules and re.fullmatch(r'blocks_\d+', modules[0]):
        modules = ['blocks', modules[0].split('_')[1], *modules[1:]]
    if not modules and leaf in ('cls_token', 'pos_embed'):
        return leaf, 'same'
    renamed = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
    if not modules or leaf not in renamed:
        raise ValueError(f'param {"/".join(path)} has no timm counterpart')
    return '.'.join([*modules, renamed[leaf]]), 'kernel' if leaf == 'kernel' else 'same'


def _kernel_axes(ndim: int) -> tuple[int, ...]:
    """Axes taking a Flax kernel to timm's layout: Dense (in, out) -> (out, in), HWIO -> OIHW."""
    if ndim == 2:
        return (1, 0)
    if ndim == 4:
        return (3, 2, 0, 1)
    raise ValueError(f'no timm layout for a {ndim}-d kernel')


def _flax_to_timm(array: Any, kind: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if kind == 'kernel':
        array = array.transpose(_kernel_axes(array.ndim))
    return np.ascontiguousarray(array)


def _timm_to_flax(array: Any, kind: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if kind == 'kernel':
        array = array.transpose(np.argsort(_kernel_axes(array.ndim)))
    return np.ascontiguousarray(array)


def _timm_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == 'kernel':
        return tuple(shape[axis] for axis in _kernel_axes(len(shape)))
    return tuple(shape)


def _order_key(name: str) -> tuple[int, int, int, bool]:
    """timm's module order: top-level modules, blocks by number, layers in a block, weight first."""
    first, _, rest = name.partition('.')
    rank = _ORDER.index(first) if first in _ORDER else len(_ORDER)
    block, layer = -1, -1
    if first == 'blocks' and rest[:1].isdigit():
        index, _, rest = rest.partition('.')
        module = rest.rsplit('.', 1)[0]
        block = int(index)
        layer = _BLOCK_ORDER.index(module) if module in _BLOCK_ORDER else len(_BLOCK_ORDER)
    return rank, block, layer, name.endswith('.bias')


def _table(target: Params) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """timm name -> (Flax path, layout kind, Flax shape) for every leaf of `target`."""
    rows = []
    for path, leaf in traverse_util.flatten_dict(target).items():
        name, kind = timm_name(path)
        rows.append((name, (path, kind, tuple(np.shape(leaf)))))
    return dict(sorted(rows, key=lambda row: _order_key(row[0])))


# ----------------------------------------------------------------------------- state dicts


def unwrap(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The bare state dict of a training checkpoint (`{'model': ...}`) or of a DDP model."""
    state = checkpoint
    for key in CHECKPOINT_KEYS:
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if state and all(name.startswith(DDP_PREFIX) for name in state):
        return {name[len(DDP_PREFIX) :]: value for name, value in state.items()}
    return dict(state)


def to_timm(params: Params) -> dict[str, np.ndarray]:
    """Our params as a timm state dict of float32 NumPy arrays (to export, or to compare)."""
    flat = traverse_util.flatten_dict(params)
    table = _table(params)
    return {name: _flax_to_timm(flat[path], kind) for name, (path, kind, _) in table.items()}


# ----------------------------------------------------------------------------- model inference


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in np.shape(value)) for name, value in state.items()}


def _depth(shapes: Mapping[str, tuple[int, ...]]) -> int:
    blocks = {int(m.group(1)) for name in shapes if (m := re.match(r'blocks\.(\d+)\.', name))}
    return max(blocks) + 1 if blocks else 0


def _per_block(values: list[int]) -> int | tuple[int, ...]:
    """One int when all blocks agree (the registry's form), else one value per block."""
    return values[0] if len(set(values)) == 1 else tuple(values)


def _read_sizes(
    shapes: Mapping[str, tuple[int, ...]], base: Mapping[str, Any], geometry: dict[str, int]
) -> dict[str, Any]:
    """Constructor fields the shapes show, with `base` (a registry entry) filling the gaps.

    The head count shows in no shape (qkv is (3·H·hd, D) whatever H is at hd = D / H), so it
    is read as qkv rows / (3·hd) with hd from `base`'s head count: equal to `base`'s unless the
    checkpoint is slim (fewer heads of the same width).
    """
    dim, depth = geometry['embed_dim'], geometry['depth']
    base_heads = max(np.atleast_1d(base['num_heads']))
    head_dim = dim // base_heads
    heads, hidden = [], []
    for i in range(depth):
        rows = shapes.get(f'blocks.{i}.attn.qkv.weight', (0,))[0]
        heads.append(rows // (3 * head_dim) if rows and rows % (3 * head_dim) == 0 else base_heads)
        hidden.append(shapes.get(f'blocks.{i}.mlp.fc1.weight', (base['mlp_dim'],))[0])
    sizes = dict(
        geometry,
        num_classes=shapes.get('head.weight', (base['num_classes'],))[0],
        num_heads=_per_block([int(h) for h in heads]),
        mlp_dim=_per_block([int(h) for h in hidden]),
    )
    if dim // max(heads) != head_dim:  # the model would otherwise derive hd from max(heads)
        sizes['head_dim'] = head_dim
    return sizes


def infer_model(state_dict: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registered model the tensor shapes describe, and the overrides it needs to fit them.

    Among the registered models of the same width (embed_dim) the one needing the fewest
    overrides wins, so DeiT checkpoints give e.g. ('deit_small_patch16_224', {}) and a DeiT-S
    fine-tuned to 100 classes ('deit_small_patch16_224', {'num_classes': 100}).
    """
    shapes = _shapes(unwrap(state_dict))
    lacking = [name for name in ('patch_embed.proj.weight', 'pos_embed') if name not in shapes]
    if lacking:
        raise ValueError(f'cannot infer the model: the state dict lacks {lacking}; name the model')
    dim, _, patch = shapes['patch_embed.proj.weight'][:3]
    tokens = shapes['pos_embed'][1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(
            f'pos_embed has {tokens} tokens, not one class token plus a square grid of patches '
            '(distilled DeiT has two prefix tokens and is not supported)'
        )
    depth = _depth(shapes)
    if depth == 0:
        raise ValueError('cannot infer the model: the state dict has no blocks.{i}.* tensors')
    geometry = dict(embed_dim=dim, depth=depth, patch_size=patch, image_size=grid * patch)
    candidates = []
    for name, base in MODEL_CONFIGS.items():
        if base['embed_dim'] == dim:
            sizes = _read_sizes(shapes, base, geometry)
            overrides = {key: value for key, value in sizes.items() if base.get(key) != value}
            candidates.append((len(overrides), name, overrides))
    if not candidates:
        widths = sorted({base['embed_dim'] for base in MODEL_CONFIGS.values()})
        raise ValueError(
            f'no registered model has embed_dim {dim} (registered widths: {widths}); '
            'register one in sparse_vit_jax.models.MODEL_CONFIGS or name the model'
        )
    _, name, overrides = min(candidates, key=lambda candidate: candidate[0])
    return name, overrides


def infer_model_name(state_dict: Mapping[str, Any]) -> str:
    """The registered model name the tensor shapes describe (see `infer_model`)."""
    return infer_model(state_dict)[0]


def input_channels(state_dict: Mapping[str, Any]) -> int:
    """Image channels the patch embedding expects (3 when the state dict does not say)."""
    state = unwrap(state_dict)
    weight = state.get('patch_embed.proj.weight')
    return int(np.shape(weight)[1]) if weight is not None and np.ndim(weight) == 4 else 3


def param_shapes(model: VisionTransformer, channels: int = 3) -> Params:
    """The params tree `model` initializes, as shapes and dtypes (nothing is computed)."""
    images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), images)['params']


# ----------------------------------------------------------------------------- checking


def _describe(model: VisionTransformer) -> str:
    fields = ('num_classes', 'image_size', 'patch_size', 'embed_dim', 'depth', 'num_heads')
    return 'VisionTransformer(' + ', '.join(f'{f}={getattr(model, f)}' for f in fields) + ', ...)'


def _note(name: str) -> str:
    for pattern, note in _UNEXPECTED_NOTES:
        if re.search(pattern, name):
            return f'{name}  ({note})'
    return name


def _is_float(value: Any) -> bool:
    dtype = np.dtype(value.dtype) if hasattr(value, 'dtype') else np.asarray(value).dtype
    return dtype.kind == 'f' or dtype.name == 'bfloat16'


def _problems(state: Mapping[str, Any], target: Params) -> dict[str, list[str]]:
    """Missing, unexpected, wrongly shaped and non-float tensors, by timm name and layout."""
    table = _table(target)
    shapes = _shapes(state)
    wrong = []
    for name, (_, kind, flax_shape) in table.items():
        expected = _timm_shape(flax_shape, kind)
        if name in shapes and shapes[name] != expected:
            wrong.append(f'{name}: expected {expected}, got {shapes[name]}')
    return {
        'missing': [name for name in table if name not in shapes],
        'unexpected': [
            _note(name)
            for name in sorted(shapes, key=lambda name: (_order_key(name), name))
            if name not in table
        ],
        'wrong shape (timm layout)': wrong,
        'not floating point': [
            f'{name}: {np.asarray(state[name]).dtype}'
            for name in table
            if name in state and not _is_float(state[name])
        ],
    }


def _report(problems: dict[str, list[str]], label: str) -> str:
    count = sum(len(items) for items in problems.values())
    lines = [f'the state dict does not fit {label}: {count} problem(s)']
    for title, items in problems.items():
        if items:
            lines.append(f'  {title} ({len(items)}):')
            lines += [f'    {item}' for item in items[:_MAX_LISTED]]
            if len(items) > _MAX_LISTED:
                lines.append(f'    ... and {len(items) - _MAX_LISTED} more')
    return '\n'.join(lines)


def from_timm(
    state_dict: Mapping[str, Any],
    model: VisionTransformer | None = None,
    *,
    target: Params | None = None,
) -> Params:
    """Our params from a timm / DeiT / SViTE state dict, checked against the model they are for.

    Args:
      state_dict: timm name -> array (NumPy, or anything `np.asarray` takes). A training
        checkpoint holding it under 'model' or 'state_dict', and DDP's 'module.' prefix, are
        accepted.
      model: the model the params are for; by default the one `infer_model` reads from the
        shapes.
      target: instead of `model`, the params tree (arrays or `jax.eval_shape` structs) to fill.

    Returns:
      A nested dict of float32 NumPy arrays in our layout (`model.apply({'params': ...})`).

    Raises:
      ValueError: naming every missing, unexpected, wrongly shaped or non-float tensor at once.
    """
    state = unwrap(state_dict)
    if target is not None:
        label = 'the target params'
    else:
        if model is None:
            name, overrides = infer_model(state)
            model = create_model(name, **overrides)
            suffix = f' {overrides}' if overrides else ''
            label = f'{name}{suffix} (inferred from the shapes)'
        else:
            label = _describe(model)
        target = param_shapes(model, input_channels(state))
    problems = _problems(state, target)
    if any(problems.values()):
        raise ValueError(_report(problems, label))
    table = _table(target)
    flat = {path: _timm_to_flax(state[name], kind) for name, (path, kind, _) in table.items()}
    return traverse_util.unflatten_dict(flat)
