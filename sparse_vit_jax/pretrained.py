"""Trained weights from outside a run: timm/DeiT files and other runs of ours.

Two uses:

* ``config.init_from`` (``--config.init_from=PATH[:STEP]``): a fresh run starts from the weights
  of a timm ``.safetensors``/``.npz``/``.pth`` file or of a workdir's checkpoint (latest, or
  STEP), adapted to the run's model by `adapt` — the classifier head is re-initialized when the
  class count differs, the position embedding resampled when the patch grid differs, the patch
  embedding's input channels adapted — and everything kept, reset, resampled or adapted is
  reported. A resumed run ignores init_from (its checkpoint wins).
* `import_weights`: a timm file as a model-only checkpoint that evaluation reads
  (tools/convert_timm.py).

Resampling and channel adaptation follow timm (``resample_abs_pos_embed``: the prefix token
kept, the patch grid resized bicubically with antialiasing; ``adapt_input_conv``: RGB kernels
summed for one channel, tiled and rescaled for more), so weights behave as they do when timm
loads them into a model of another size.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import convert, paths, weights
from sparse_vit_jax.models import create_model, create_model_from_config

Path = tuple[str, ...]
HEAD = ('head',)  # the classifier: re-initialized when the class count differs
POS_EMBED = ('pos_embed',)
PATCH_KERNEL = ('patch_embed', 'kernel')
TOKEN_SELECTOR = 'token_selector'  # SViTE+ scorers: the run's own, never required of a source
PREFIX_TOKENS = 1  # the class token


@dataclasses.dataclass(frozen=True)
class Source:
    """Weights to start from, in our params layout (float32 NumPy), and where they came from."""

    params: dict
    description: str  # e.g. 'deit_small_patch16_224 from W.safetensors'


@dataclasses.dataclass
class Report:
    """What `adapt` did to each tensor of the target model."""

    kept: list[str] = dataclasses.field(default_factory=list)
    reset: list[str] = dataclasses.field(default_factory=list)
    resampled: list[str] = dataclasses.field(default_factory=list)
    adapted: list[str] = dataclasses.field(default_factory=list)
    initialized: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per kind of change (for the log)."""
        out = [f'kept {len(self.kept)} tensors']
        for title in ('reset', 'resampled', 'adapted', 'initialized', 'dropped'):
            for item in getattr(self, title):
                out.append(f'{title}: {item}')
        return out


# ----------------------------------------------------------------------------- sources


def parse_source(spec: str) -> tuple[str, int | None]:
    """'PATH' or 'PATH:STEP' -> (PATH, STEP or None); gs:// and other schemes are kept whole."""
    match = re.fullmatch(r'(.+):(\d+)', spec)
    if match and not re.fullmatch(r'[a-zA-Z][\w+.-]*', match.group(1)):  # not a bare scheme
        return match.group(1), int(match.group(2))
    return spec, None


def load_source(spec: str) -> Source:
    """The weights `spec` names: a timm weights file, or a workdir's checkpoint (optional STEP)."""
    path, step = parse_source(spec)
    if weights.is_weight_file(path):
        if step is not None:
            raise ValueError(f'init_from {spec}: a weights file has no steps; drop ":{step}"')
        state = weights.load_weights(path)
        try:
            name, overrides = convert.infer_model(state)
            params = convert.from_timm(state, create_model(name, **overrides))
        except ValueError as error:
            raise ValueError(f'init_from {path}: {_one_line(str(error))}') from None
        described = f'{name} {overrides}' if overrides else name
        return Source(params, f'{described} from {path}')
    if not paths.resolve(path).exists():
        raise FileNotFoundError(
            f'init_from {path} does not exist; give a .safetensors/.npz/.pth file or a workdir'
        )
    from sparse_vit_jax.train.restore import restore_model

    restored = restore_model(path, step=step)
    params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), restored.params)
    return Source(params, f'{restored.config.model.name} at step {restored.step} of {path}')


def _one_line(message: str) -> str:
    """A multi-line problem report (convert.from_timm) as one line: the first few problems."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) == 1:
        return lines[0]
    head, items = lines[0], [line for line in lines[1:] if not line.endswith(':')]
    shown = '; '.join(items[:4]) + ('; ...' if len(items) > 4 else '')
    return f'{head}: {shown}'


# ----------------------------------------------------------------------------- adapting


def resample_pos_embed(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    """(1, prefix + g², D) -> (1, prefix + grid², D): the prefix token kept, the g×g patch grid
    resized bicubically with antialiasing (timm's resample_abs_pos_embed, which loading a
    checkpoint into a model of another image or patch size uses)."""
    prefix, patches = pos_embed[:, :PREFIX_TOKENS], pos_embed[:, PREFIX_TOKENS:]
    old = math.isqrt(patches.shape[1])
    dim = patches.shape[-1]
    resized = jax.image.resize(
        patches.reshape(old, old, dim), (grid, grid, dim), method='bicubic', antialias=True
    )
    resized = np.asarray(resized, np.float32).reshape(1, grid * grid, dim)
    return np.concatenate([prefix, resized], axis=1)


def adapt_input_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
    """An RGB patch-embedding kernel (p, p, 3, D) for `channels` input channels (timm's
    adapt_input_conv): summed for grayscale, otherwise tiled and scaled by 3 / channels (for a
    multiple of 3 channels the response to a gray image is then unchanged)."""
    if kernel.shape[2] != 3:
        raise ValueError(f'only RGB kernels are adapted, this one takes {kernel.shape[2]}')
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    tiled = np.tile(kernel, (1, 1, math.ceil(channels / 3), 1))[:, :, :channels]
    return tiled * np.float32(3 / channels)


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(leaf))


def _name(path: Path) -> str:
    return '/'.join(path)


def adapt(source: Source, target: dict) -> tuple[dict, Report]:
    """Source params fitted to `target` (the run model's freshly initialized params).

    Kept where shapes agree; the head re-initialized (target's init) when the class count
    differs; pos_embed resampled when the grid differs; the patch kernel's input channels
    adapted; token selectors the source lacks initialized, ones the target lacks dropped.
    Any other difference means another architecture: ValueError in one line.
    """
    src = traverse_util.flatten_dict(source.params)
    dst = traverse_util.flatten_dict(target)
    report, out, wrong = Report(), {}, []
    for path, init in dst.items():
        want = _shape(init)
        if path not in src:
            if TOKEN_SELECTOR in path:
                out[path] = np.asarray(init)
                report.initialized.append(f'{_name(path)} (not in the weights)')
            else:
                wrong.append(f'{_name(path)} missing')
            continue
        have, value = _shape(src[path]), np.asarray(src[path], np.float32)
        if have == want:
            out[path] = value
            report.kept.append(_name(path))
        elif path[: len(HEAD)] == HEAD and have[:-1] == want[:-1]:
            out[path] = np.asarray(init)
            report.reset.append(f'{_name(path)} ({have[-1]} -> {want[-1]} classes, re-initialized)')
        elif path == POS_EMBED and have[::2] == want[::2] and _is_grid(have) and _is_grid(want):
            grid = (math.isqrt(have[1] - PREFIX_TOKENS), math.isqrt(want[1] - PREFIX_TOKENS))
            out[path] = resample_pos_embed(value, grid[1])
            report.resampled.append(
                f'pos_embed ({grid[0]}x{grid[0]} -> {grid[1]}x{grid[1]} patches, bicubic)'
            )
        elif path == PATCH_KERNEL and have[:2] + have[3:] == want[:2] + want[3:] and have[2] == 3:
            out[path] = adapt_input_channels(value, want[2])
            report.adapted.append(f'patch_embed/kernel (3 -> {want[2]} input channels)')
        else:
            wrong.append(f'{_name(path)} {have} vs {want}')
    extra = [path for path in src if path not in dst]
    for path in extra:
        if TOKEN_SELECTOR in path:
            report.dropped.append(f'{_name(path)} (the model has no token selector)')
        else:
            wrong.append(f'{_name(path)} not in the model')
    if wrong:
        shown = ', '.join(wrong[:3]) + (', ...' if len(wrong) > 3 else '')
        raise ValueError(
            f'init_from: the weights ({source.description}) do not fit config.model: '
            f"{len(wrong)} tensors differ ({shown}); set config.model to the weights' "
            'architecture (name, embed_dim, depth, num_heads, mlp_dim, patch_size)'
        )
    return traverse_util.unflatten_dict(out), report


def _is_grid(shape: tuple[int, ...]) -> bool:
    patches = shape[1] - PREFIX_TOKENS
    return len(shape) == 3 and patches > 0 and math.isqrt(patches) ** 2 == patches


def initial_params(spec: str, target: dict) -> tuple[dict, Report, str]:
    """init_from: (params for the run, what was done, the source's description)."""
    source = load_source(spec)
    params, report = adapt(source, jax.tree.map(np.asarray, target))
    return params, report, source.description


# ----------------------------------------------------------------------------- importing


def _what_the_shapes_say(state: dict) -> str:
    """A hint for when a named model does not fit: the model the weights themselves describe."""
    try:
        name, overrides = convert.infer_model(state)
    except ValueError as error:
        return f'(the shapes fit no registered model: {error})'
    described = f'{name} {overrides}' if overrides else name
    return f'(the shapes describe {described}; without a model or class count that is imported)'


def import_weights(
    path: str, workdir: str, *, model: str | None = None, num_classes: int | None = None
) -> dict[str, Any]:
    """Writes a timm weights file as a model-only checkpoint (step 0) of `workdir`.

    The model is read from the tensor shapes unless `model` (and/or `num_classes`) name it; the
    run config is the DeiT ImageNet recipe for that model, so evaluation knows the eval
    pipeline. Returns what was written (directory, model, overrides, parameter count).
    """
    from sparse_vit_jax.train.checkpoint import Checkpointer

    state = weights.load_weights(path)
    name, overrides = (model, {}) if model else convert.infer_model(state)
    if num_classes is not None:
        overrides['num_classes'] = num_classes
    config = config_lib.base_config()
    config.model = config_lib.model_config(name, **overrides)
    config_lib.validate(config)
    channels = convert.input_channels(state)
    if channels != len(config.data.mean):
        raise ValueError(
            f'the patch embedding takes {channels} channels but the eval data '
            f'({config.data.name}) has {len(config.data.mean)}'
        )
    try:
        params = convert.from_timm(state, create_model_from_config(config.model))
    except ValueError as error:
        if model is None and num_classes is None:
            raise
        raise ValueError(f'{error}\n{_what_the_shapes_say(state)}') from None
    checkpointer = Checkpointer(workdir)
    if checkpointer.latest_step() is not None:
        raise ValueError(f'{checkpointer.directory} already holds checkpoints; use a new workdir')
    source = paths.join(path)
    checkpointer.save_model(
        step=0, params=params, masks=None, meta={'config': config.to_dict(), 'source': source}
    )
    return {
        'directory': checkpointer.directory,
        'model': name,
        'overrides': overrides,
        'num_params': sum(leaf.size for leaf in jax.tree.leaves(params)),
        'source': source,
    }
