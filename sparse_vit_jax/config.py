"""Run configuration: the defaults every config file starts from, arg parsing and validation.

Config files in ``configs/`` are thin: ``get_config(arg)`` parses ``key=value,...`` with
:func:`parse_arg`, starts from :func:`base_config` and sets what the experiment needs. Every
field can be overridden on the command line (``--config.optimizer.lr=1e-3``); unknown fields are
rejected by ``ml_collections`` (the config is locked) and bad values by :func:`validate`.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from sparse_vit_jax.models import ALIASES, MODEL_CONFIGS, model_kwargs
from sparse_vit_jax.models.token_selector import MODES as TOKEN_MODES

FIDELITIES = ('reference', 'improved')
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


def model_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The model section: the registered name plus every constructor field, overridable."""
    kwargs = model_kwargs(name, **overrides)
    kwargs.setdefault('head_dim', 0)
    return ml_collections.ConfigDict(dict(name=ALIASES.get(name, name), dtype='float32', **kwargs))


def base_config() -> ml_collections.ConfigDict:
    """Defaults: the DeiT recipe on ImageNet (docs/reference.md §5), every method switched off."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = model_config('deit_small_patch16_224')
    c.data = ml_collections.ConfigDict(
        dict(
            name='imagenet2012',
            data_dir=config_dict.placeholder(str),
            train_split='train',
            eval_split='validation',
            recipe='deit',
            shuffle_buffer=25_000,
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
        )
    )
    c.tokens = ml_collections.ConfigDict(
        dict(keep=0, mode='drop', eval_mode='topk', layerwise=False, tau_start=10.0, tau_end=0.1)
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


def imagenet_config(model: str) -> ml_collections.ConfigDict:
    """The DeiT recipe on ImageNet for `model` (deit_tiny|deit_small|deit_base), at the paper's
    global batch (lr = 5e-4 · batch / 512) and ΔT for that size; every method switched off."""
    if model not in PAPER_BATCH:
        raise ValueError(f'config arg model={model!r}; choose one of {sorted(PAPER_BATCH)}')
    c = base_config()
    c.model = model_config(model)
    c.batch_size = PAPER_BATCH[model]
    c.data.eval_batch_size = PAPER_BATCH[model] * 3 // 2  # the official eval batch is 1.5× train
    c.sparsity.update_every = PAPER_UPDATE_EVERY[model]
    c.sparsity.update_every_batch = PAPER_BATCH[model]
    return c


# Compute dtypes; params stay float32 either way.
COMPUTE_DTYPES = ('float32', 'bfloat16')


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate(c: ml_collections.ConfigDict) -> None:
    """Rejects out-of-range values with a message that names the field and the fix."""
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
    _check(c.batch_size > 0, f'config.batch_size must be positive, got {c.batch_size}')
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
        s.distribution in ('erk', 'uniform'),
        f"config.sparsity.distribution must be 'erk' or 'uniform', got {s.distribution!r}",
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
        t.eval_mode in ('topk', 'gumbel'),
        f"config.tokens.eval_mode must be 'topk' or 'gumbel', got {t.eval_mode!r}",
    )
    _check(c.mesh.fsdp >= 1, f'config.mesh.fsdp must be >= 1, got {c.mesh.fsdp}')
    _check(
        c.log_every_steps > 0 and c.checkpoint_every_steps > 0 and c.keep_checkpoints > 0,
        'config.log_every_steps, checkpoint_every_steps and keep_checkpoints must be positive',
    )
