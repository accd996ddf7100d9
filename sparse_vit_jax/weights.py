"""Weight files: timm state dicts read from and written to .safetensors, .npz and .pth files.

Files are read and written whole through the path layer (`paths.py`), so a gs:// path works
wherever a local one does. Nothing here runs pickled code: .npz files are read with allow_pickle=False and torch
files with weights_only=True (torch is needed for those only, and is not a dependency).
"""

from __future__ import annotations

import argparse
import io
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
from sparse_vit_jax import paths
from sparse_vit_jax.convert import unwrap

# What a weight file may be called; anything else given as init_from is a workdir.
EXTENSIONS = ('.safetensors', '.npz', '.pth', '.pt', '.bin')

_PICKLE_HINT = (
    'A weights file must hold plain tensors. Re-save the state dict once, where you trust the '
    'file, e.g. with torch: safetensors.torch.save_file(torch.load(f, weights_only=False)'
    "['model'], 'weights.safetensors')"
)


def is_weight_file(path: str) -> bool:
    return paths.resolve(path).suffix.lower() in EXTENSIONS


def _read(path: str) -> bytes:
    file = paths.resolve(path)
    if not file.exists():
        raise FileNotFoundError(f'weights file {path} does not exist')
    return file.read_bytes()


def load_weights(path: str) -> dict[str, Any]:
    """The state dict in a .safetensors, .npz or .pth/.pt/.bin file, as NumPy arrays.

    Training checkpoints are unwrapped to their model state dict. A truncated or corrupt file
    raises ValueError naming the file.
    """
    extension = paths.resolve(path).suffix.lower()
    if extension not in EXTENSIONS:
        raise ValueError(f'{path}: unknown format {extension!r}; use .safetensors, .npz or .pth')
    data = _read(path)
    if extension == '.safetensors':
        return _load_safetensors(path, data)
    if extension == '.npz':
        return _load_npz(path, data)
    return _load_torch(path, data)


def _load_safetensors(path: str, data: bytes) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return load(data)
    except SafetensorError as error:
        raise ValueError(
            f'{path} is not a readable .safetensors file ({error}); it is truncated or corrupt: '
            'download or copy it again'
        ) from None


def save_safetensors(state: Mapping[str, np.ndarray], path: str, metadata=None) -> None:
    """Writes a state dict (name -> array) as a .safetensors file."""
    from safetensors.numpy import save

    arrays = {name: np.ascontiguousarray(value) for name, value in state.items()}
    paths.write_atomic(path, save(arrays, metadata=metadata))


def _load_npz(path: str, data: bytes) -> dict[str, np.ndarray]:
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, Mapping):  # an .npy: one unnamed array
            raise ValueError(f'{path} holds one unnamed array; expected an .npz of named arrays')
        with archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as error:
        if 'allow_pickle' not in str(error):
            raise
        raise ValueError(
            f'{path} needs pickle to load ({error}); it holds Python objects, not only arrays. '
            + _PICKLE_HINT
        ) from None
    except (OSError, EOFError, KeyError) as error:  # zip damage surfaces as any of these
        raise ValueError(f'{path} is not a readable .npz file ({error}); it is corrupt') from None


def _load_torch(path: str, data: bytes) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f'reading {path} needs PyTorch, which is not installed (sparse_vit_jax does not need '
            'it). Install a CPU build (pip install torch --index-url '
            'https://download.pytorch.org/whl/cpu), or convert the file to .safetensors or .npz '
            'where torch is installed.'
        ) from None
    # DeiT and SViTE training checkpoints keep their argparse args beside the weights; allowing
    # that one plain-attribute class lets them load without running arbitrary pickled code.
    allow = getattr(torch.serialization, 'safe_globals', None)
    buffer = io.BytesIO(data)
    try:
        if allow is None:
            checkpoint = torch.load(buffer, map_location='cpu', weights_only=True)
        else:
            with allow([argparse.Namespace]):
                checkpoint = torch.load(buffer, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ''
        raise ValueError(
            f'{path} is a pickle that weights_only loading refuses ({first_line}). ' + _PICKLE_HINT
        ) from None
    except (RuntimeError, EOFError) as error:  # not a torch file, truncated, ...
        raise ValueError(f'torch.load cannot read {path}: {error}') from None
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'{path} holds a {type(checkpoint).__name__}, not a state dict')
    state = unwrap(checkpoint)
    return {name: _torch_to_numpy(torch, value) for name, value in state.items()}


def _torch_to_numpy(torch: Any, value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value  # reported as a problem by from_timm if it is ever used
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype not in (torch.float16, torch.float32):
        value = value.float()  # bfloat16 and float64 -> float32, which is what we keep anyway
    return value.numpy()
