"""Speed of train steps, inference and the input pipeline (see sparse_vit_jax/benchmark/).

  python tools/benchmark.py train|infer --model deit_tiny_patch16_224 --batch 32 --steps 10 \
      [--warmup 2] [--dtype float32|bfloat16] [--vs_timm] [--json]
  python tools/benchmark.py train --config configs/s2vite.py:model=deit_small --batch 64 --json
  python tools/benchmark.py infer --config configs/sviteplus.py:keep_tokens=138 --batch 64 --json
  python tools/benchmark.py infer --checkpoint runs/s2vite_slim --batch 64 [--json]
  python tools/benchmark.py input [--config configs/dense.py:model=deit_tiny] --num_images 512 \
      [--augment full|light] [--train_demand_model deit_tiny_patch16_224] [--vs_float32] [--json]

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tools/benchmark.py memory \
      --config configs/svite.py:model=deit_base --batch 1024 --dtype bfloat16 \
      [--config.model.remat=block] [--config.mesh.fsdp=8] [--topology v5e:2x4] [--json]
  python tools/benchmark.py save --config configs/svite.py:model=deit_base --batch 8 --steps 3 \
      [--workdir /tmp/save_bench] [--json]

train|infer --model: images/s of the real train step (DeiT AdamW, dense) or the forward on random
inputs: median over --steps timed steps after --warmup, step time median/p10/p90, compile
seconds, peak RSS, XLA GFLOPs per image and achieved GFLOP/s, also as a fraction of a large
matmul's rate timed in the same run (the machine's practical ceiling). --vs_timm adds timm in
PyTorch on the same machine (torch and timm are optional; docs/benchmarks.md says how to install
them), measured in alternating blocks of --block steps, and ratio = JAX / timm.

train --config: the config's sparse train step against dense (overhead, the topology update
amortized over ΔT); --baseline CONFIG compares with that dense config instead (a narrow dense
model against the full-width one). infer --config: the deployed model (slim S²ViTE, dropped
tokens) against dense (time_saving beside flops_saving). memory: XLA's memory analysis of the
config's (or --model's) train step at global --batch on the config's mesh over all visible
devices, per device, compiled but never run; --topology compiles for a TPU slice with the TPU
compiler (libtpu installed, no TPU needed). input: the production ImageNet pipeline on
--num_images fake 375×500 JPEGs, optionally against a model's train-step demand; the bytes each
batch sends to the devices (uint8 images); --vs_float32 alternates passes with the images
normalized to float32 on the host, as before (ratios of bytes and images/s).
infer --checkpoint: the forward of a workdir's own model and weights (a run or an export,
local or gs://), restored onto this machine's devices.
save: the config's train state checkpointed in --workdir (default: a temp dir), --steps timed
saves per layout: bytes on disk per item and seconds until the save returns / completes, with
the masks stored once (as now) and also inside the optimizer state (as before), alternating;
then whether a train step at --batch overlaps the asynchronous write.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax import config as config_lib

COMMANDS = ('train', 'infer', 'memory', 'input', 'save')
# The production ImageNet recipe for DeiT-Tiny.
DEFAULT_INPUT_CONFIG = 'configs/dense.py:model=deit_tiny'

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (path[:args]): compare its method against dense.', lock_config=True
)
_BASELINE = config_flags.DEFINE_config_file(
    'baseline', None, 'train --config: compare with this dense config instead.', lock_config=True
)
_MODEL = flags.DEFINE_string('model', None, 'Registered model name (train/infer).')
_BATCH = flags.DEFINE_integer('batch', 32, 'Global batch size.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (per side when comparing).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling (per side).')
_BLOCK = flags.DEFINE_integer('block', 2, 'Steps per block when two sides alternate.')
_DTYPE = flags.DEFINE_enum(
    'dtype', None, ['float32', 'bfloat16'], 'Compute dtype (default: float32 / the config).'
)
_VS_TIMM = flags.DEFINE_bool(
    'vs_timm', False, 'Also time timm in PyTorch at --dtype (autocast), same device (--model only).'
)
_PEAK = flags.DEFINE_float(
    'peak_tflops', None, "train/infer --model: the chip's peak TFLOP/s at --dtype, for MFU."
)
_NUM_IMAGES = flags.DEFINE_integer('num_images', 512, 'input: fake train JPEGs.')
_AUGMENT = flags.DEFINE_enum(
    'augment',
    'full',
    ['full', 'light'],
    'input: the DeiT augmentation, or light (no RandAugment or random erasing).',
)
_PASSES = flags.DEFINE_integer('passes', 3, 'input: timed passes over the fake data.')
_WARMUP_PASSES = flags.DEFINE_integer('warmup_passes', 1, 'input: untimed passes first.')
_DEMAND = flags.DEFINE_string(
    'train_demand_model', None, "input: also time this model's train step (the demand)."
)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'input: where the fake data goes; save: the checkpoints (temp dir).'
)
_STEP_MS = flags.DEFINE_float(
    'step_ms', 0.0, "input: consume each batch in this many ms (an accelerator's step): the "
    "wait for each epoch's first batch is then the epoch-boundary stall."
)
_VS_FLOAT32 = flags.DEFINE_bool(
    'vs_float32',
    False,
    'input: also time the pipeline normalizing images to float32 on the host (as before they '
    'crossed to the device as uint8), in alternating passes.',
)
_TOPOLOGY = flags.DEFINE_string(
    'topology',
    None,
    'memory: compile for this TPU slice instead of the local devices (e.g. v5e:2x4, '
    'v4:2x2x2; needs libtpu installed, not a TPU).',
)
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, "infer: time this workdir's checkpoint.")
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')




def run_command(command: str) -> dict:
    from sparse_vit_jax import benchmark

    common = dict(batch=_BATCH.value, steps=_STEPS.value, warmup=_WARMUP.value)
    if command == 'input':
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # preparing the fake data would draw bars on stderr
        config = _CONFIG.value or config_lib.load(DEFAULT_INPUT_CONFIG)
        return benchmark.input_speed(
            config,
            num_images=_NUM_IMAGES.value,
            batch=_BATCH.value,
            augment=_AUGMENT.value,
            passes=_PASSES.value,
            warmup_passes=_WARMUP_PASSES.value,
            train_demand_model=_DEMAND.value,
            train_steps=_STEPS.value,
            dtype=_DTYPE.value or 'float32',
            workdir=_WORKDIR.value,
            step_seconds=_STEP_MS.value / 1e3,
            vs_float32=_VS_FLOAT32.value,
        )
    if command == 'save':
        from sparse_vit_jax.benchmark.save import save_speed

        if _CONFIG.value is None:
            raise app.UsageError('save needs --config (the run whose train state to save)')
        return save_speed(
            _CONFIG.value, batch=_BATCH.value, saves=_STEPS.value, workdir=_WORKDIR.value
        )
    if _CHECKPOINT.value:
        if command != 'infer' or _MODEL.value or _CONFIG.value or _VS_TIMM.value:
            raise app.UsageError('--checkpoint goes with infer alone (no --model, --config)')
        return benchmark.checkpoint_speed(_CHECKPOINT.value, dtype=_DTYPE.value, **common)
    if (_MODEL.value is None) == (_CONFIG.value is None):
        raise app.UsageError(f'{command} needs exactly one of --model and --config')
    if command == 'memory':
        from sparse_vit_jax.benchmark import jax_bench, memory

        config = _CONFIG.value or jax_bench.model_bench_config(_MODEL.value, _BATCH.value)
        return memory.train_memory(
            config, batch=_BATCH.value, dtype=_DTYPE.value, topology=_TOPOLOGY.value
        )
    if _MODEL.value:
        return benchmark.model_speed(
            command,
            _MODEL.value,
            dtype=_DTYPE.value or 'float32',
            vs_timm=_VS_TIMM.value,
            block=_BLOCK.value,
            peak_tflops=_PEAK.value,
            **common,
        )
    if _VS_TIMM.value:
        raise app.UsageError('--vs_timm compares registered models: use it with --model')
    if command == 'train':
        return benchmark.sparse_train_overhead(
            _CONFIG.value,
            dtype=_DTYPE.value,
            block=_BLOCK.value,
            baseline=_BASELINE.value,
            **common,
        )
    return benchmark.inference_saving(
        _CONFIG.value, dtype=_DTYPE.value, block=_BLOCK.value, **common
    )


def describe(result: dict) -> str:
    """A few human lines (--json prints everything)."""
    mode = result['mode']
    if mode == 'memory':
        b = result['bytes_per_device']
        gib = lambda key: f'{b[key] / 2**30:.2f} GiB'
        return (
            f"memory per device ({result['backend']}, mesh {result['mesh']}): "
            f"{result['model']} {result['config_method']} {result['dtype']} remat "
            f"{result['remat']}, {result['per_device_batch']} images/device: peak "
            f"≤ {result['peak_gib_per_device']:.2f} GiB = arguments {gib('argument')} + outputs "
            f"{gib('output')} − aliased {gib('alias')} + temporaries {gib('temp')}"
        )
    if mode == 'save':
        once, twice, ratio = result['masks_once'], result['masks_twice'], result['once_vs_twice']
        overlap = result['overlap']
        side = lambda r: (
            f"{r['bytes'] / 1e6:.0f} MB, returns in {r['return_s']:.2f} s, complete in "
            f"{r['complete_s']:.2f} s"
        )
        return (
            f"save {result['model']} {result['config_method']}: masks once {side(once)}; masks "
            f"twice (before) {side(twice)}; once/twice bytes {ratio['bytes']:.3f}, complete "
            f"{ratio['complete_s']:.2f}. Save {overlap['save_s']:.2f} s + step "
            f"{overlap['step_s']:.2f} s vs both {overlap['save_with_step_s']:.2f} s: "
            f"{overlap['hidden_fraction']:.0%} hidden"
        )
    head = f"{mode}: {result['images_per_sec']:.1f} images/s"
    if mode == 'input':
        line = (
            f"{head} ({result['images_per_sec_per_core']:.1f} images/s per core, "
            f"{result['images_per_cpu_second']:.1f} images per CPU-second)"
        )
        line += f"; {result['bytes_per_batch'] / 1e6:.2f} MB per batch to the devices"
        if 'float32' in result:
            ratios = result['uint8_vs_float32']
            line += (
                f"; float32 on the host: {result['float32']['images_per_sec']:.1f} images/s, "
                f"{result['float32']['bytes_per_batch'] / 1e6:.2f} MB per batch (uint8/float32: "
                f"bytes {ratios['bytes_per_batch']:.2f}, images/s {ratios['images_per_sec']:.2f})"
            )
        if 'ratio' in result:
            line += (
                f"; {result['train_demand_model']} trains at "
                f"{result['train_demand_images_per_sec']:.1f} images/s, ratio {result['ratio']:.2f}"
            )
        return line
    if 'overhead' in result:
        return (
            f"{head} ({result['config_method']}, amortized over ΔT={result['update_every']}) vs "
            f"dense {result['dense_images_per_sec']:.1f} images/s: overhead "
            f"{result['overhead']:+.1%} (regular steps {result['regular_overhead']:+.1%})"
        )
    if 'time_saving' in result:
        return (
            f"{head} ({result['deployed']}) vs dense "
            f"{result['dense_images_per_sec']:.1f} images/s: time saving {result['time_saving']:.1%}, FLOPs saving {result['flops_saving']:.1%}"
        )
    step = result['step_time_ms']
    line = (
        f"{head} {result['model']} batch {result['batch']} {result['dtype']}: step "
        f"{step['median']:.1f} ms (p10 {step['p10']:.1f} ms, p90 {step['p90']:.1f} ms), "
        f"compile {result['compile_seconds']:.1f} s"
    )
    if 'fraction_of_matmul_rate' in result:
        line += (
            f"; {result['achieved_gflops_per_sec']:.0f} GFLOP/s = "
            f"{result['fraction_of_matmul_rate']:.0%} of the matmul rate "
            f"{result['matmul_gflops_per_sec']:.0f} GFLOP/s"
        )
    if 'mfu' in result:
        line += f"; MFU {result['mfu']:.1%} of {result['peak_tflops']:g} TFLOP/s"
    if 'ratio' in result:
        line += f"; timm {result['timm_images_per_sec']:.1f} images/s, ratio {result['ratio']:.2f}"
    return line


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f'usage: benchmark.py {"|".join(COMMANDS)} [flags]')
    result = run_command(argv[1])
    print(json.dumps(result) if _JSON.value else describe(result))


if __name__ == '__main__':
    cli.run(main)
