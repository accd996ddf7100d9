"""FLOPs of a config's model in the paper's convention (docs/reference.md §6) and as XLA counts
them.

  python tools/flops.py --config configs/sviteplus.py:model=deit_small,keep_tokens=187 [--json]

--json prints {"gmacs", "dense_gmacs", "saving", "xla_gflops", "xla_dense_gflops", ...}: MACs per
image (paper), its saving against the dense model, and XLA's FLOPs per image of the compiled
forward (see sparse_vit_jax/flops.py for what each counts).
"""

import json

from absl import app, flags
from ml_collections import config_flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax import config as config_lib
from sparse_vit_jax import flops, units

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (path[:args]).', lock_config=True
)
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')
_XLA = flags.DEFINE_bool('xla', True, "Also compile the forward for XLA's count (seconds).")
flags.mark_flags_as_required(['config'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    config = _CONFIG.value
    config_lib.validate(config)
    result = flops.report_from_config(config, xla=_XLA.value)
    if _JSON.value:
        print(json.dumps(result))
        return
    macs = lambda key: units.quantity(result[key] * 1e9, 'MACs', like=result['dense_gmacs'] * 1e9)
    print(
        f"{config.model.name} ({config.sparsity.method}): {macs('gmacs')} per image "
        f"(dense {macs('dense_gmacs')}, saving {result['saving']:.2%})"
    )
    if 'slim_gmacs' in result:
        print(f"  slim model (proj shrunk too): {macs('slim_gmacs')} per image")
    if 'xla_gflops' in result:
        dense = result['xla_dense_gflops'] * 1e9
        xla = lambda key: units.quantity(result[key] * 1e9, 'FLOPs', like=dense)
        print(f"  XLA: {xla('xla_gflops')} per image (dense {xla('xla_dense_gflops')})")

if __name__ == '__main__':
    cli.run(main)
