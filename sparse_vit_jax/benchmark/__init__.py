"""Speed measurements behind tools/benchmark.py; every function returns a JSON-able dict.

- `model_speed(mode, name, ...)`: a registered model's real train step or forward, optionally
  beside timm in PyTorch;
- `sparse_train_overhead(config, ...)`: a sparse method's train step against dense, the
  topology update amortized over ΔT;
- `inference_saving(config, ...)`: the deployed slim / token-dropping model against dense,
  with the FLOPs saving it should approach;
- `checkpoint_speed(workdir, ...)`: the forward of a checkpoint's own model and weights, restored
  onto the devices at hand;
- `input_speed(config, ...)`: the production ImageNet input pipeline on fake 375×500 JPEGs;
- `save.save_speed(config, ...)`: checkpoint bytes and save seconds of a config's train state,
  the masks stored once against the earlier layout, and the async write against a train step.

Numbers are medians over timed steps after warm-up, each step timed to completion; whatever is
compared is measured in alternating blocks in one process (`timing.alternate`). Only
`input_speed` needs TensorFlow; it is imported on first use.
"""

from sparse_vit_jax.benchmark.measure import (
    checkpoint_speed,
    inference_saving,
    model_speed,
    sparse_train_overhead,
)
from sparse_vit_jax.benchmark.timing import Runner, Timings, alternate


def __getattr__(name):
    if name == 'input_speed':
        from sparse_vit_jax.benchmark.input import input_speed

        return input_speed
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'Runner',
    'Timings',
    'alternate',
    'checkpoint_speed',
    'inference_saving',
    'input_speed',
    'model_speed',
    'sparse_train_overhead',
]
