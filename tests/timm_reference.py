"""An independent timm DeiT for tests: its state dict layout, random weights, and its forward
pass in NumPy (float64), written from timm's definition of the model, not from convert.py or
models/vit.py, so agreement with them means the mapping and the model are right."""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def timm_layout(dim, depth, hidden, classes, patch, image, channels=3) -> dict[str, tuple]:
    """timm's VisionTransformer state dict for DeiT: name -> shape, in timm's module order."""
    shapes = {
        'cls_token': (1, 1, dim),
        'pos_embed': (1, 1 + (image // patch) ** 2, dim),
        'patch_embed.proj.weight': (dim, channels, patch, patch),
        'patch_embed.proj.bias': (dim,),
    }
    for i in range(depth):
        shapes.update(
            {
                f'blocks.{i}.norm1.weight': (dim,),
                f'blocks.{i}.norm1.bias': (dim,),
                f'blocks.{i}.attn.qkv.weight': (3 * dim, dim),
                f'blocks.{i}.attn.qkv.bias': (3 * dim,),
                f'blocks.{i}.attn.proj.weight': (dim, dim),
                f'blocks.{i}.attn.proj.bias': (dim,),
                f'blocks.{i}.norm2.weight': (dim,),
                f'blocks.{i}.norm2.bias': (dim,),
                f'blocks.{i}.mlp.fc1.weight': (hidden, dim),
                f'blocks.{i}.mlp.fc1.bias': (hidden,),
                f'blocks.{i}.mlp.fc2.weight': (dim, hidden),
                f'blocks.{i}.mlp.fc2.bias': (dim,),
            }
        )
    shapes.update(
        {
            'norm.weight': (dim,),
            'norm.bias': (dim,),
            'head.weight': (classes, dim),
            'head.bias': (classes,),
        }
    )
    return shapes


def random_state_dict(layout: dict[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    """Weights ~ N(0, 0.1) (LayerNorm scales 1 + N(0, 0.1)): far from init, so layouts matter."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in layout.items():
        value = rng.normal(0.0, 0.1, shape)
        if name.endswith(('norm1.weight', 'norm2.weight', 'norm.weight')):
            value += 1.0
        state[name] = value.astype(np.float32)
    return state


def _layer_norm(x, state, name, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * state[f'{name}.weight'] + state[f'{name}.bias']


def _linear(x, state, name):
    return x @ state[f'{name}.weight'].T + state[f'{name}.bias']


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_deit(state: dict[str, np.ndarray], images: np.ndarray, heads: int) -> np.ndarray:
    """timm's DeiT forward in float64 on NCHW images, straight from the timm state dict."""
    state = {name: value.astype(np.float64) for name, value in state.items()}
    weight = state['patch_embed.proj.weight']  # (D, C, p, p): a stride-p conv is a matmul
    dim, channels, p, _ = weight.shape
    batch, _, height, width = images.shape
    patches = images.reshape(batch, channels, height // p, p, width // p, p)
    patches = patches.transpose(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * p * p)
    x = patches @ weight.reshape(dim, -1).T + state['patch_embed.proj.bias']
    cls = np.broadcast_to(state['cls_token'], (batch, 1, dim))
    x = np.concatenate([cls, x], axis=1) + state['pos_embed']
    tokens, head_dim = x.shape[1], dim // heads
    depth = len({name.split('.')[1] for name in state if name.startswith('blocks.')})
    for i in range(depth):
        block = f'blocks.{i}'
        qkv = _linear(_layer_norm(x, state, f'{block}.norm1'), state, f'{block}.attn.qkv')
        q, k, v = qkv.reshape(batch, tokens, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
        attention = _softmax(q @ k.swapaxes(-1, -2) * head_dim**-0.5)
        mixed = (attention @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
        x = x + _linear(mixed, state, f'{block}.attn.proj')
        hidden = _linear(_layer_norm(x, state, f'{block}.norm2'), state, f'{block}.mlp.fc1')
        hidden = 0.5 * hidden * (1.0 + erf(hidden / np.sqrt(2.0)))  # exact GELU
        x = x + _linear(hidden, state, f'{block}.mlp.fc2')
    return _linear(_layer_norm(x, state, 'norm')[:, 0], state, 'head')
