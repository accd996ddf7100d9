"""timm in PyTorch as the speed reference: the same ViT, timed the same way, in the same process.

torch and timm are optional and never project dependencies; they are imported only here and
only when asked for. timm imports torchvision, whose PyPI wheels need a CUDA build of torch
(docs/benchmarks.md, "Installing torch and timm"); where it does not import, a stub with the few
names timm touches at import time takes its place (as tests/test_convert.py does).
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any, Mapping

from sparse_vit_jax.benchmark.timing import Runner
from sparse_vit_jax.errors import UserError

SETUP = (
    'Install them outside the project, as docs/benchmarks.md ("Installing torch and timm") '
    'describes, e.g. `python -m pip install --target /tmp/torch_timm --no-deps torch==2.13.0 '
    'timm==1.0.31 sympy mpmath networkx filelock jinja2 huggingface_hub pyyaml safetensors`, '
    'then run with PYTHONPATH=.:/tmp/torch_timm'
)


class TimmUnavailableError(UserError):
    """torch or timm cannot be imported."""


class TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports any torchvision.* as an empty package with the few names timm touches at import."""

    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torchvision':
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        import torch

        modes = enum.Enum('InterpolationMode', 'NEAREST BILINEAR BICUBIC BOX HAMMING LANCZOS')
        module.__version__ = '0.0.0+stub'
        module.InterpolationMode = modes
        module.FrozenBatchNorm2d = torch.nn.BatchNorm2d

        def dummy(attribute):  # any other public name: a placeholder class
            if attribute.startswith('__'):
                raise AttributeError(attribute)
            return type(attribute, (), {})

        module.__getattr__ = dummy


def stub_torchvision() -> None:
    """Puts the stub in place unless a working torchvision imports (idempotent)."""
    if any(isinstance(finder, TorchvisionStub) for finder in sys.meta_path):
        return
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001  (missing, or built against another torch)
        for name in [name for name in sys.modules if name.split('.')[0] == 'torchvision']:
            del sys.modules[name]
    sys.meta_path.insert(0, TorchvisionStub())


def import_torch_timm() -> tuple[Any, Any]:
    """(torch, timm), or TimmUnavailableError saying how to install them."""
    try:
        import torch
    except Exception as error:  # noqa: BLE001  (ImportError, or a broken install)
        raise TimmUnavailableError(
            f'the timm comparison needs torch and timm, which are not project dependencies, '
            f'and torch does not import ({error}). {SETUP}'
        ) from None
    stub_torchvision()
    try:
        import timm
    except Exception as error:  # noqa: BLE001
        raise TimmUnavailableError(
            f'the timm comparison needs timm, which is not a project dependency, and it does '
            f'not import ({error}). {SETUP}'
        ) from None
    return torch, timm


def torch_device() -> str:
    """'cuda' when JAX computes on a GPU and torch sees one (the same chip side by side), else
    'cpu'."""
    import jax

    torch, _ = import_torch_timm()
    return 'cuda' if jax.default_backend() == 'gpu' and torch.cuda.is_available() else 'cpu'


def timm_model(timm: Any, name: str, kwargs: Mapping[str, Any], channels: int) -> Any:
    """timm's model of that name with our registry's classes and drop path, or, for names timm
    does not know (the small test models), timm's VisionTransformer with our sizes."""
    common = dict(
        num_classes=kwargs['num_classes'],
        drop_path_rate=kwargs['drop_path_rate'],
        in_chans=channels,
    )
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, **common)
    heads, hidden = kwargs['num_heads'], kwargs['mlp_dim']
    if not isinstance(heads, int) or not isinstance(hidden, int):
        raise ValueError(f'{name}: timm has no per-layer heads or MLP widths')
    return timm.models.vision_transformer.VisionTransformer(
        img_size=kwargs['image_size'],
        patch_size=kwargs['patch_size'],
        embed_dim=kwargs['embed_dim'],
        depth=kwargs['depth'],
        num_heads=heads,
        mlp_ratio=hidden / kwargs['embed_dim'],
        **common,
    )


def timm_runner(
    mode: str,
    name: str,
    kwargs: Mapping[str, Any],
    batch: int,
    *,
    channels: int = 3,
    per_block: int = 1,
    warmup: int = 1,
    dtype: str = 'float32',
    device: str = 'cpu',
) -> tuple[Runner, dict[str, Any]]:
    """A runner for timm's eager train step (AdamW + CrossEntropyLoss) or inference forward
    (inference_mode), on all cores or on `device` ('cuda'); and what it ran.

    dtype 'bfloat16' runs the forward (and loss) under `torch.autocast` to bfloat16 with float32
    parameters, PyTorch's counterpart of the JAX bfloat16 compute dtype.
    """
    torch, timm = import_torch_timm()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    net = timm_model(timm, name, kwargs, channels).to(device)
    size = kwargs['image_size']
    images = torch.randn(batch, channels, size, size, device=device)
    autocast = lambda: torch.autocast(  # noqa: E731
        device.split(':')[0], dtype=torch.bfloat16, enabled=dtype == 'bfloat16'
    )
    # CPU ops have finished when they return; CUDA ones are waited for
    finish = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    if mode == 'train':
        net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.05)
        loss_fn = torch.nn.CrossEntropyLoss()
        labels = torch.randint(0, kwargs['num_classes'], (batch,), device=device)

        def call():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(net(images), labels)
            loss.backward()
            optimizer.step()
            finish()

    else:
        net.eval()

        def call():
            with torch.inference_mode(), autocast():
                net(images)
            finish()

    info = {
        'dtype': dtype,
        'device': device,
        'torch_version': torch.__version__,
        'timm_version': timm.__version__,
        'threads': torch.get_num_threads(),
        'model': name if timm.is_model(name) else 'VisionTransformer(registry sizes)',
        'params': sum(p.numel() for p in net.parameters()),
    }
    return Runner('timm', call, batch, per_block, warmup), info
