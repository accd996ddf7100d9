"""Per-layer density distributions for unstructured sparse initialisation.

Both functions are host-side (plain Python/NumPy, float64), deterministic, and map a layer name to
the fraction of that layer's entries that start active. They only decide *how many* weights each
layer keeps; drawing the actual masks is `sparse_vit_jax.sparsity.masks`' job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Shape = Sequence[int]


def _validate(shapes: Mapping[str, Shape], density: float) -> dict[str, tuple[int, ...]]:
    if not isinstance(shapes, Mapping) or len(shapes) == 0:
        raise ValueError('shapes must be a non-empty mapping from layer name to shape')
    if not (0.0 < float(density) <= 1.0):
        raise ValueError(f'density must be in (0, 1], got {density!r}')
    clean: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        dims = tuple(int(d) for d in shape)
        if len(dims) == 0 or any(d <= 0 for d in dims):
            raise ValueError(
                f'layer {name!r} has an invalid shape {tuple(shape)!r}; '
                'every dimension must be a positive integer'
            )
        clean[name] = dims
    return clean


def uniform(shapes: Mapping[str, Shape], density: float) -> dict[str, float]:
    """Every layer gets the same density (the reference's `--sparse_init uniform`)."""
    clean = _validate(shapes, density)
    return {name: float(density) for name in clean}


def erk(shapes: Mapping[str, Shape], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities, exactly as the reference's `fixed_ERK` initialisation.

    Reference semantics (SViTE `Masking.init(mode='fixed_ERK')`, erk_power_scale = 1):

    * raw_l = (sum of ALL dims of layer l) / (product of all dims). Kernel dims of a conv count
      too, so the result does not depend on the dimension order (HWIO and OIHW agree).
    * With D the set of layers already forced dense, solve
      eps * sum_{l not in D} raw_l * n_l = density * sum_{l not in D} n_l
                                           - (1 - density) * sum_{l in D} n_l.
    * If eps * max(raw) > 1, every layer whose raw equals that maximum (exact float equality)
      joins D at once and eps is solved again; the loop repeats until valid. It can run several
      times (DeiT-Base at density 0.8 makes `attn.proj` dense, then the classifier head).
    * Layer density = eps * raw_l, or 1.0 for dense layers.

    The resulting overall density (weighted by numel) equals `density` up to float error.
    Unlike the reference, which crashes when every layer ends up dense (density 1.0 with equal
    raw values), this returns 1.0 for every layer in that case.

    Args:
      shapes: layer name -> shape. Order only affects float summation order.
      density: target overall density in (0, 1].

    Returns:
      layer name -> density in (0, 1].
    """
    clean = _validate(shapes, density)
    density = float(density)
    numel = {name: float(np.prod(dims, dtype=np.float64)) for name, dims in clean.items()}
    raw = {
        name: float(np.sum(dims, dtype=np.float64)) / numel[name] for name, dims in clean.items()
    }

    dense: set[str] = set()
    epsilon = 0.0
    while len(dense) < len(clean):
        sparse_names = [name for name in clean if name not in dense]
        rhs = sum(numel[name] * density for name in sparse_names) - sum(
            numel[name] * (1.0 - density) for name in dense
        )
        divisor = sum(raw[name] * numel[name] for name in sparse_names)
        epsilon = rhs / divisor
        max_raw = max(raw[name] for name in sparse_names)
        if max_raw * epsilon <= 1.0:
            break
        # Exact equality on purpose: identical shapes share the same raw value and the
        # reference moves all of them into the dense set in the same iteration.
        dense.update(name for name in sparse_names if raw[name] == max_raw)

    return {name: 1.0 if name in dense else epsilon * raw[name] for name in clean}


# config.sparsity.distribution: the name of each distribution.
NAMES = ('erk', 'uniform')


def densities(distribution: str, shapes: Mapping[str, Shape], density: float) -> dict[str, float]:
    """The per-layer densities of the distribution named `distribution` (one of NAMES)."""
    if distribution not in NAMES:
        raise ValueError(f'unknown distribution {distribution!r}; choose one of {NAMES}')
    return (erk if distribution == 'erk' else uniform)(shapes, density)


def overall_density(shapes: Mapping[str, Shape], densities: Mapping[str, float]) -> float:
    """Numel-weighted mean of per-layer densities: the fraction of prunable weights kept."""
    clean = _validate(shapes, 1.0)
    total = sum(float(np.prod(d, dtype=np.float64)) for d in clean.values())
    kept = sum(float(np.prod(d, dtype=np.float64)) * float(densities[n]) for n, d in clean.items())
    return kept / total
