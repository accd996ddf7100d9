"""Numbers for people: a count in the SI prefix its size calls for ('1.28 MMACs', '4.6 GMACs'),
so a 2-MMAC model does not read as '0.002 GMACs'."""

from __future__ import annotations

_PREFIXES = ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k'))


def prefix(value: float) -> tuple[float, str]:
    """(scale, prefix) to show `value` in: the largest prefix not above it ('' below 1000)."""
    return next(((s, p) for s, p in _PREFIXES if abs(value) >= s), (1.0, ''))


def quantity(value: float, unit: str, *, like: float | None = None, digits: int = 3) -> str:
    """`value` in `unit` with the prefix its size calls for (that of `like` when given, so values
    printed side by side share a prefix), to `digits` significant digits: '1.28 MMACs'."""
    scale, name = prefix(value if like is None else like)
    return f'{value / scale:.{digits}g} {name}{unit}'
