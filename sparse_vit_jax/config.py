"""Run configuration: the defaults every config file starts from, arg parsing and validation.

Config files in ``configs/`` are thin: ``get_config(arg)`` parses ``key=value,...`` with
:func:`parse_arg`, starts from :func:`base_config` and sets what the experiment needs. Every
field can be overridden on the command line (``--config.optimizer.lr=1e-3``); unknown fields are
rejected by ``ml_collections`` (the config is locked) and bad values by :func:`validate`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from ml_collections import config_dict

from sparse_vit_jax.models import ALIASES, MODEL_CONFIGS, model_kwargs
from sparse_vit_jax.models.token_selector import EVAL_MODES as TOKEN_EVAL_MODES
from sparse_vit_jax.models.token_selector import MODES as TOKEN_MODES
from sparse_vit_jax.models.vit import REMAT_CHOICES
from sparse_vit_jax.sparsity import distributions
from sparse_vit_jax.sparsity.state import FIDELITIES
from sparse_vit_jax.train import sharding as sharding_lib

# What each fidelity's token selector does unless a config says otherwise: the official code
# multiplies unselected tokens by zero and draws fresh Gumbel noise at evaluation; improved
# gathers them away (what saves time) and keeps the deterministic top-k at evaluation.
TOKEN_SELECTION = {
    'reference': dict(mode='zero', eval_mode='gumbel'),
    'improved': dict(mode='drop', eval_mode='topk'),
}
REGROWN_MOMENTS = ('', 'reset', 'keep')


@dataclasses.dataclass(frozen=True)
class Method:
    """What a `config.sparsity.method` implies. Code asks `method(name)` rather than testing names.

    Attributes:
      masks: 'none' (dense), 'weights' (SViTE: one mask per prunable weight, ERK densities) or
        'units' (S²ViTE: attention heads and MLP neurons, `head_density`/`neuron_density`).
      dynamic: prune and grow every ΔT until t_end; False keeps the initial masks all run long
        (the static baselines: the same initial draw, never updated).
      tokens: a learnable token selector (SViTE+; `config.tokens.keep` tokens kept).
    """

    name: str
    masks: str
    dynamic: bool
    tokens: bool

    @property
    def sparse(self) -> bool:
        return self.masks != 'none'

    @property
    def structured(self) -> bool:
        return self.masks == 'units'


_METHODS = (
    Method('dense', masks='none', dynamic=False, tokens=False),
    Method('svite', masks='weights', dynamic=True, tokens=False),
    Method('s2vite', masks='units', dynamic=True, tokens=False),
    Method('sviteplus', masks='weights', dynamic=True, tokens=True),
    Method('s2viteplus', masks='units', dynamic=True, tokens=True),
    Method('static', masks='weights', dynamic=False, tokens=False),
    Method('s2static', masks='units', dynamic=False, tokens=False),
)
METHODS = tuple(m.name for m in _METHODS)


def method(name: str) -> Method:
    """The traits of sparsity method `name`; unknown names are refused listing the choices."""
    for m in _METHODS:
        if m.name == name:
            return m
    raise ValueError(f'config.sparsity.method={name!r}; choose one of {METHODS}')


def set_method(
    c: ml_collections.ConfigDict,
    name: str,
    *,
    fidelity: str = 'reference',
    density: float = 1.0,
    head_density: float = 1.0,
    neuron_density: float = 1.0,
    keep_tokens: int = 0,
) -> None:
    """Sets everything sparsity method `name` at `fidelity` implies in `c.sparsity` and `c.tokens`.

    The densities the method uses are set, the others stay 1.0 (a method that prunes no weights
    ignores `density`); a token method keeps `keep_tokens` tokens and selects them as
    TOKEN_SELECTION says for the fidelity, any other method selects none. Every config file
    builds its method here, so `method=sviteplus,fidelity=reference` means the same run whichever
    file it comes from; a config may still override a field afterwards (--config.tokens.mode=...).
    """
    traits = method(name)
    if fidelity not in FIDELITIES:
        raise ValueError(f'config arg fidelity={fidelity!r}; choose one of {FIDELITIES}')
    c.sparsity.update(
        dict(
            method=name,
            fidelity=fidelity,
            density=density if traits.masks == 'weights' else 1.0,
            head_density=head_density if traits.structured else 1.0,
            neuron_density=neuron_density if traits.structured else 1.0,
        )
    )
    c.tokens.update(dict(keep=keep_tokens if traits.tokens else 0, **TOKEN_SELECTION[fidelity]))


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses 'a=1,b=x' into a ConfigDict typed by `defaults`; unknown keys are errors."""
    parsed = dict(defaults)
    for item in filter(None, (arg or '').split(',')):
        key, sep, raw = item.partition('=')
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f'unknown config arg {key!r}; valid args: {", ".join(sorted(defaults))}'
            )
        default = defaults[key]
        if not sep:
            value = True if isinstance(default, bool) else None
            if value is None:
                raise ValueError(f'config arg {key!r} needs a value, e.g. {key}={default}')
        elif isinstance(default, str):
            value = raw
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise ValueError(
                    f'config arg {key}={raw!r} is not a valid {type(default).__name__}'
                ) from None
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            if type(value) is not type(default):
                raise ValueError(f'config arg {key}={raw!r} must be a {type(default).__name__}')
        parsed[key] = value
    return ml_collections.ConfigDict(parsed)


# Relative config paths that are not found from the working directory are looked up here, so
# 'configs/dense.py' names the repository's file from anywhere.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_file(path: str) -> Any:
    """The config file at `path` as a module (its `get_config`, its docstring, its constants). A
    relative path not found from the working directory is taken from the repository root."""
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(_REPO, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file {path!r} not found')
    name = 'config_' + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config that `spec` = 'path/to/config.py[:arg]' names, as `--config` reads it:
    ``get_config(arg)`` of that file, locked (unknown fields are errors), with `overrides`
    ({'optimizer.lr': 1e-3, ...}) set as `--config.optimizer.lr=...` would.

    Not validated: `validate` checks batches against the devices where the run happens.
    """
    path, sep, arg = spec.partition('.py:')
    c = config_file(path + '.py' if sep else spec).get_config(arg if sep else None)
    c.lock()
    for field, value in (overrides or {}).items():
        *parents, leaf = field.split('.')
        section = c
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    return c


def model_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The model section: the registered name plus every constructor field, overridable."""
    kwargs = model_kwargs(name, **overrides)
    kwargs.setdefault('head_dim', 0)
    kwargs.setdefault('remat', 'none')
    return ml_collections.ConfigDict(dict(name=ALIASES.get(name, name), dtype='float32', **kwargs))


def base_config() -> ml_collections.ConfigDict:
    """Defaults: the DeiT recipe on ImageNet (docs/reference.md §5), every method switched off."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Start a fresh run from trained weights: a timm .safetensors/.npz/.pth file, or a workdir
    # of ours (optionally WORKDIR:STEP). See sparse_vit_jax/pretrained.py; resuming ignores it.
    c.init_from = config_dict.placeholder(str)
    c.model = model_config('deit_small_patch16_224')
    c.data = ml_collections.ConfigDict(
        dict(
            # A TFDS name, or 'folder' for an image folder at data_dir (one subfolder per class).
            name='imagenet2012',
            data_dir=config_dict.placeholder(str),
            # The image and label features; '' = the dataset's supervised keys (data/datasets.py).
            image_key='',
            label_key='',
            train_split='train',
            eval_split='validation',
            recipe='deit',
            shuffle_buffer=25_000,
            # Repeated augmentation: each image 3 times in a row, each copy augmented anew, an
            # epoch as long as before. When the batch is not a multiple (the paper's 512 is not),
            # the image at a batch boundary has its copies in two consecutive steps, as with
            # DeiT's sampler; so any batch is accepted.
            repeats=3,
            cache=False,
            eval_batch_size=768,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            augment=dict(
                crop_padding=0,
                flip=True,
                randaugment='rand-m9-mstd0.5-inc1',
                reprob=0.25,
                crop_pct=0.875,
            ),
        )
    )
    c.batch_size = 512
    c.num_epochs = 600.0
    c.optimizer = ml_collections.ConfigDict(
        dict(
            lr=5e-4,
            lr_base_batch=512,
            weight_decay=0.05,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            warmup_epochs=5.0,
            warmup_lr=1e-6,
            min_lr=1e-5,
            grad_clip_norm=0.0,
        )
    )
    c.label_smoothing = 0.1
    c.mixup = ml_collections.ConfigDict(
        dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
    )
    c.ema_decay = 0.0
    c.sparsity = ml_collections.ConfigDict(
        dict(
            method='dense',
            fidelity='reference',
            density=1.0,
            distribution='erk',
            update_every=15_000,
            update_every_batch=512,
            t_end=0.8,
            prune_rate=0.5,
            final_prune_rate=0.005,
            head_density=1.0,
            neuron_density=1.0,
            # Adam moments of regrown weights: '' = the fidelity's choice (reference: kept, as
            # the official code; improved: see README), or 'reset' / 'keep' for an ablation.
            regrown_moments='',
            # Initial masks: 'random' (the method's own), 'magnitude' (keep the largest weights,
            # or heads/neurons by their pruning scores), 'auto' = magnitude iff init_from is set.
            init='auto',
        )
    )
    c.tokens = ml_collections.ConfigDict(
        dict(
            keep=0,
            **TOKEN_SELECTION[c.sparsity.fidelity],
            layerwise=False,
            tau_start=10.0,
            tau_end=0.1,
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2**18))
    c.log_every_steps = 100
    c.eval_every_epochs = 10.0
    c.checkpoint_every_steps = 5000
    c.keep_checkpoints = 3
    return c


# The paper's per-size settings (docs/reference.md §5.5): global batch and ΔT at that batch.
PAPER_BATCH = {'deit_tiny': 512, 'deit_small': 512, 'deit_base': 1024}
PAPER_UPDATE_EVERY = {'deit_tiny': 15_000, 'deit_small': 15_000, 'deit_base': 7_000}

# The args every ImageNet config (configs/dense.py, svite.py, s2vite.py, sviteplus.py) takes;
# batch=0 is the paper's batch for the model size.
IMAGENET_ARGS = dict(model='deit_small', epochs=600.0, batch=0, seed=0)


def imagenet_config(
    model: str, *, epochs: float = 600.0, batch: int = 0, seed: int = 0
) -> ml_collections.ConfigDict:
    """The DeiT recipe on ImageNet for `model` (deit_tiny|deit_small|deit_base) with every method
    switched off: `epochs`, and the paper's global batch for the size unless `batch` is given.

    lr = 5e-4 · batch / 512 and ΔT is the paper's at the paper's batch, rescaled to the run's
    (lr_base_batch, update_every_batch), so a smaller batch keeps the recipe. The eval batch is
    1.5× the paper's batch as in the official scripts, or `batch` when one is given (it fits in
    memory where training does, and divides the devices as the batch must).
    """
    if model not in PAPER_BATCH:
        raise ValueError(f'config arg model={model!r}; choose one of {sorted(PAPER_BATCH)}')
    if batch < 0:
        raise ValueError(f"config arg batch={batch} must be positive (0: the paper's batch)")
    c = base_config()
    c.model = model_config(model)
    c.seed = seed
    c.num_epochs = epochs
    c.batch_size = batch or PAPER_BATCH[model]
    c.data.eval_batch_size = batch or PAPER_BATCH[model] * 3 // 2
    c.sparsity.update_every = PAPER_UPDATE_EVERY[model]
    c.sparsity.update_every_batch = PAPER_BATCH[model]
    return c


def compress_schedule(c: ml_collections.ConfigDict, epochs: float, lr_scale: float = 1.0) -> None:
    """Fits `c`'s recipe, written for c.num_epochs, into `epochs` (sparsifying trained weights):
    ΔT and the warmup scale with the length, so the run makes as many topology updates and warms
    up for the same fraction of it; the prune-rate decay and t_end are fractions of the run
    already. The peak lr is multiplied by `lr_scale`."""
    ratio = epochs / c.num_epochs
    c.sparsity.update_every = max(1, round(c.sparsity.update_every * ratio))
    c.optimizer.warmup_epochs = c.optimizer.warmup_epochs * ratio
    c.optimizer.lr = c.optimizer.lr * lr_scale
    c.num_epochs = float(epochs)


MASK_INITS = ('auto', 'random', 'magnitude')


def mask_init(c: ml_collections.ConfigDict) -> str:
    """'random' or 'magnitude': how a run's initial masks are chosen (config.sparsity.init)."""
    if c.sparsity.init == 'auto':
        return 'magnitude' if c.init_from else 'random'
    return c.sparsity.init


# Compute dtypes; params stay float32 either way.
COMPUTE_DTYPES = ('float32', 'bfloat16')


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def mixup_enabled(c: ml_collections.ConfigDict) -> bool:
    """Whether the run mixes images (Mixup or CutMix, on device)."""
    m = c.mixup
    return m.prob > 0 and (m.mixup_alpha > 0 or m.cutmix_alpha > 0)


def _check_batches(c: ml_collections.ConfigDict) -> None:
    """Batch sizes that Mixup/CutMix and the devices can split, checked before any data or
    compile work (the train step would only find out after building the input pipeline)."""
    batch, eval_batch = c.batch_size, c.data.eval_batch_size
    _check(batch > 0, f'config.batch_size must be positive, got {batch}')
    _check(eval_batch > 0, f'config.data.eval_batch_size must be positive, got {eval_batch}')
    _check(c.data.repeats >= 1, f'config.data.repeats must be >= 1, got {c.data.repeats}')
    if mixup_enabled(c) and batch % 2:
        multiple = math.lcm(2, jax.device_count(), jax.process_count())
        raise ValueError(
            f'config.batch_size={batch} is odd, but Mixup/CutMix mixes every image with another '
            f'of its batch; use a multiple of {multiple} (e.g. {-(-batch // multiple) * multiple})'
            ', or turn mixing off with --config.mixup.prob=0'
        )
    sharding_lib.local_batch_size(batch, 'config.batch_size')
    sharding_lib.local_batch_size(eval_batch, 'config.data.eval_batch_size')


def _numbers(tree: Any, prefix: str = 'config'):
    """(dotted name, value) of every number in a config, sequences included."""
    for key, value in tree.items():
        name = f'{prefix}.{key}'
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            yield from _numbers(value, name)
        elif isinstance(value, (list, tuple)):
            yield from ((f'{name}[{i}]', v) for i, v in enumerate(value))
        else:
            yield name, value


# Bounds on fields whose absurd values would otherwise fail late or train nonsense.
_AT_LEAST_0 = (lambda v: v >= 0, '>= 0')
_ABOVE_0 = (lambda v: v > 0, '> 0')
_FRACTION = (lambda v: 0 <= v <= 1, 'in [0, 1]')
_DECAY = (lambda v: 0 <= v < 1, 'in [0, 1)')
_RANGES = {
    'optimizer.warmup_epochs': _AT_LEAST_0,
    'optimizer.warmup_lr': _AT_LEAST_0,
    'optimizer.min_lr': _AT_LEAST_0,
    'optimizer.weight_decay': _AT_LEAST_0,
    'optimizer.grad_clip_norm': _AT_LEAST_0,
    'optimizer.eps': _ABOVE_0,
    'optimizer.b1': _DECAY,
    'optimizer.b2': _DECAY,
    'ema_decay': _DECAY,
    'mixup.mixup_alpha': _AT_LEAST_0,
    'mixup.cutmix_alpha': _AT_LEAST_0,
    'mixup.prob': _FRACTION,
    'mixup.switch_prob': _FRACTION,
    'eval_every_epochs': _ABOVE_0,
    'data.shuffle_buffer': _AT_LEAST_0,
}


def _check_numbers(c: ml_collections.ConfigDict) -> None:
    """Every number finite (an infinite epoch count or a NaN rate is a typo), and the fields of
    _RANGES in range."""
    for name, value in _numbers(c):
        if isinstance(value, float):
            _check(math.isfinite(value), f'{name}={value} is not a finite number')
    for field, (ok, bounds) in _RANGES.items():
        value = c
        for part in field.split('.'):
            value = value[part]
        _check(ok(value), f'config.{field} must be {bounds}, got {value}')


def validate(c: ml_collections.ConfigDict) -> None:
    """Rejects out-of-range values with a message that names the field and the fix.

    Batch sizes are checked against this process's JAX devices too, so call it where the run
    will happen (after jax.distributed.initialize on a pod).
    """
    _check_numbers(c)
    name = ALIASES.get(c.model.name, c.model.name)
    _check(
        name in MODEL_CONFIGS,
        f'config.model.name={c.model.name!r} is not a registered model; '
        f'choose one of {sorted(MODEL_CONFIGS)}',
    )
    _check(
        c.model.dtype in COMPUTE_DTYPES,
        f'config.model.dtype={c.model.dtype!r}; choose one of {COMPUTE_DTYPES}',
    )
    _check(
        c.model.remat in REMAT_CHOICES,
        f'config.model.remat={c.model.remat!r}; choose one of {REMAT_CHOICES} '
        '(block or dots trade compute for activation memory)',
    )
    _check(c.num_epochs > 0, f'config.num_epochs must be positive, got {c.num_epochs}')
    _check(c.optimizer.lr > 0, f'config.optimizer.lr must be positive, got {c.optimizer.lr}')
    _check(
        0 <= c.label_smoothing < 1,
        f'config.label_smoothing must be in [0, 1), got {c.label_smoothing}',
    )
    s = c.sparsity
    _check(s.method in METHODS, f'config.sparsity.method={s.method!r}; choose one of {METHODS}')
    _check(
        s.fidelity in FIDELITIES,
        f'config.sparsity.fidelity={s.fidelity!r}; choose one of {FIDELITIES}',
    )
    _check(0 < s.density <= 1, f'config.sparsity.density must be in (0, 1], got {s.density}')
    _check(
        s.distribution in distributions.NAMES,
        f'config.sparsity.distribution={s.distribution!r}; choose one of {distributions.NAMES}',
    )
    _check(
        s.init in MASK_INITS,
        f'config.sparsity.init={s.init!r}; choose one of {MASK_INITS}',
    )
    _check(
        s.update_every > 0, f'config.sparsity.update_every (ΔT) must be > 0, got {s.update_every}'
    )
    _check(
        s.update_every_batch > 0,
        f'config.sparsity.update_every_batch must be > 0, got {s.update_every_batch}',
    )
    _check(0 < s.t_end <= 1, f'config.sparsity.t_end must be in (0, 1], got {s.t_end}')
    _check(
        s.regrown_moments in REGROWN_MOMENTS,
        f'config.sparsity.regrown_moments={s.regrown_moments!r}; choose one of {REGROWN_MOMENTS} '
        "('' follows the fidelity)",
    )
    _check(
        0 <= s.final_prune_rate <= s.prune_rate <= 1,
        'config.sparsity needs 0 <= final_prune_rate <= prune_rate <= 1, got '
        f'{s.final_prune_rate} and {s.prune_rate}',
    )
    heads, hidden = c.model.num_heads, c.model.mlp_dim
    for field, units, density in (
        ('head_density', heads, s.head_density),
        ('neuron_density', hidden, s.neuron_density),
    ):
        _check(0 < density <= 1, f'config.sparsity.{field} must be in (0, 1], got {density}')
        if isinstance(units, int):
            _check(
                int(units * density) >= 1,
                f'config.sparsity.{field}={density} keeps int({units}·{density}) = 0 units per '
                f'block; use at least {1 / units:.3g}',
            )
    t = c.tokens
    tokens = 1 + (c.model.image_size // c.model.patch_size) ** 2
    if method(s.method).tokens or t.keep:
        _check(
            1 <= t.keep <= tokens,
            f'config.tokens.keep={t.keep} must be between 1 and the sequence length {tokens} '
            '(patches + class token)',
        )
    _check(
        t.mode in TOKEN_MODES, f'config.tokens.mode={t.mode!r}; choose one of {TOKEN_MODES}',
    )
    _check(
        not (t.mode == 'mask' and t.layerwise),
        "config.tokens.mode='mask' does not combine with tokens.layerwise; use 'zero' or 'drop'",
    )
    _check(
        t.eval_mode in TOKEN_EVAL_MODES,
        f'config.tokens.eval_mode={t.eval_mode!r}; choose one of {TOKEN_EVAL_MODES}',
    )
    _check(c.mesh.fsdp >= 1, f'config.mesh.fsdp must be >= 1, got {c.mesh.fsdp}')
    _check_batches(c)
    _check(
        c.log_every_steps > 0 and c.checkpoint_every_steps > 0 and c.keep_checkpoints > 0,
        'config.log_every_steps, checkpoint_every_steps and keep_checkpoints must be positive',
    )
