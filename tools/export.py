"""Export a run's model: slim (S²ViTE), timm (PyTorch) or StableHLO (any JAX, no project code).

  python tools/export.py --workdir runs/s2vite --format slim --out runs/s2vite_slim
  python tools/export.py --workdir runs/svite --format timm --out exports/svite_timm
  python tools/export.py --workdir runs/svite --format stablehlo --out exports/svite_hlo

--format slim: an S²ViTE run's physically smaller dense model, a checkpoint tools/evaluate.py
  reads (the same logits as the masked run in its fidelity; other runs are refused).
--format timm: model.safetensors in timm's names (pruned weights exactly 0) and config.json with
  `architecture` and `model_args`: timm.create_model(architecture, **model_args) then
  load_state_dict(safetensors.torch.load_file('model.safetensors')). Dense and SViTE runs.
--format stablehlo: model.stablehlo, the eval forward pass serialized with jax.export (weights
  inside, any batch size), and config.json; run it with jax alone:
  jax.export.deserialize(open('model.stablehlo', 'rb').read()).call(images).
config.json also gives the input (image size, channels, mean/std) and the class names.
"""

import json

from absl import app, flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax import portable
from sparse_vit_jax.export import export_slim

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run (or slim export) with checkpoints/.', required=True
)
_OUT = flags.DEFINE_string('out', None, 'Folder to write (a new workdir for slim).', required=True)
_FORMAT = flags.DEFINE_enum(
    'format', None, ['slim', *portable.FORMATS], 'What to export.', required=True
)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_PLATFORMS = flags.DEFINE_list(
    'platforms', list(portable.PLATFORMS), 'stablehlo: platforms to lower for.'
)
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')


def _print_slim(report: dict) -> None:
    print(
        f"wrote {report['out']}/{report['step']}: slim model of {report['workdir']} "
        f"({report['method']}, {report['fidelity']} fidelity), "
        f"{report['num_params']:,} params (from {report['source_num_params']:,})"
    )
    print(f"  heads per block:   {report['kept_heads']}")
    print(f"  neurons per block: {report['kept_neurons']}")
    print(f'evaluate with: python tools/evaluate.py --workdir {_OUT.value}')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    workdir, out, step = _WORKDIR.value, _OUT.value, _STEP.value
    if _FORMAT.value == 'slim':
        report = export_slim(workdir, out, step=step)
    elif _FORMAT.value == 'timm':
        report = portable.export_timm(workdir, out, step=step)
    else:
        report = portable.export_stablehlo(
            workdir, out, step=step, platforms=tuple(_PLATFORMS.value)
        )
    if _JSON.value:
        print(json.dumps(report))
    elif _FORMAT.value == 'slim':
        _print_slim(report)
    else:
        files = ', '.join(report['files'])
        print(f"wrote {files} to {report['out']} from step {report['step']} of {workdir}")
        if _FORMAT.value == 'timm':
            print(
                f"  timm.create_model({report['architecture']!r}, **model_args): "
                f"{report['num_params']:,} params, {report['nonzero_params']:,} nonzero"
            )
        else:
            print(
                f"  {report['bytes']:,} bytes for {', '.join(report['platforms'])}; "
                f"relative error against the model {report['max_relative_error']:.1e}"
            )
        print(f'predict with: python tools/predict.py --exported {report["out"]} IMAGE...')


if __name__ == '__main__':
    cli.run(main)
