"""The measurements tools/benchmark.py reports: each returns one JSON-able dict.

- `model_speed`: a registered model's train step or forward (optionally beside timm);
- `sparse_train_overhead`: a config's sparse train step against its dense counterpart, the
  topology update amortized over ΔT;
- `inference_saving`: the model a config deploys (slim S²ViTE, token dropping) against the
  dense one, with the FLOPs saving it should approach;
- `checkpoint_speed`: the forward of a trained or exported checkpoint's own model and weights.

Two things compared are always measured alternately (see `timing.alternate`).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from sparse_vit_jax import flops
from sparse_vit_jax.config import method
from sparse_vit_jax.benchmark import jax_bench, timing
from sparse_vit_jax.models import create_model_from_config, model_kwargs
from sparse_vit_jax.models import slim as slim_lib
from sparse_vit_jax.sparsity import state as sparsity_state
from sparse_vit_jax.sparsity import masks as masks_lib
from sparse_vit_jax.train import restore as restore_lib

MODES = ('train', 'infer')


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')


def _side(bench: Any, seconds: list[float], images: int) -> dict[str, Any]:
    """Speed, compile time and XLA FLOPs of one measured program."""
    result = timing.summarize(seconds, images)
    gflops = bench.gflops_per_image()
    result.update(
        compile_seconds=bench.compile_seconds,
        xla_gflops_per_image=gflops,
        achieved_gflops_per_sec=None if gflops is None else gflops * result['images_per_sec'],
    )
    return result


def _model_bench(mode: str, config: ml_collections.ConfigDict) -> Any:
    """The compiled JAX program of a --model measurement: train step or forward."""
    if mode == 'train':
        return jax_bench.TrainBench(config)
    model = create_model_from_config(config.model)
    params = jax_bench.random_params(config, model)
    return jax_bench.InferBench(config, model, params, config.batch_size)


def _recipe(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the JAX train step does beyond timm's plain AdamW + cross-entropy step."""
    return {
        'mixup_cutmix': config.mixup.prob > 0,
        'label_smoothing': config.label_smoothing,
        'drop_path_rate': config.model.drop_path_rate,
    }


def model_speed(
    mode: str,
    name: str,
    *,
    batch: int,
    steps: int,
    warmup: int = 2,
    dtype: str = 'float32',
    vs_timm: bool = False,
    block: int = 2,
    peak_tflops: float | None = None,
) -> dict[str, Any]:
    """images/s of registered model `name`: the real train step (the DeiT recipe, dense; see
    `model_bench_config`) or the evaluation forward, on random inputs of the model's size.

    vs_timm: also timm's model in PyTorch (eager; at `dtype` through autocast; on the GPU when
    JAX runs on one and torch sees CUDA, else on all cores), in alternating blocks of `block`
    steps; adds timm_images_per_sec, timm_step_time_ms and ratio = JAX / timm images/s.
    peak_tflops: the chip's peak rate at `dtype`; adds mfu = XLA's FLOPs per second / peak
    (and timm_mfu, counting timm's step at XLA's FLOPs of the same model).
    """
    _check_mode(mode)
    config = jax_bench.model_bench_config(name, batch, dtype)
    if vs_timm:  # a missing torch fails before anything compiles
        from sparse_vit_jax.benchmark import timm_torch

        timm_torch.import_torch_timm()
    rounds, per_block = timing.rounds_for(steps, block) if vs_timm else (1, steps)
    bench = _model_bench(mode, config)
    matmul = jax_bench.MatmulBench(dtype=dtype)
    runners = [
        bench.runner('jax', per_block=per_block, warmup=warmup),
        matmul.runner('matmul', per_block=per_block, warmup=warmup),
    ]
    if vs_timm:
        runner, timm_info = timm_torch.timm_runner(
            mode,
            config.model.name,
            model_kwargs(config.model.name),
            batch,
            channels=len(config.data.mean),
            per_block=per_block,
            warmup=warmup,
            dtype=dtype,
            device=timm_torch.torch_device(),
        )
        runners.append(runner)
    timings = timing.alternate(runners, rounds)
    result = dict(mode=mode, model=config.model.name, batch=batch, dtype=dtype, warmup=warmup)
    result.update(_side(bench, timings.seconds['jax'], batch))
    # the achieved fraction of the machine's large-matmul rate, measured in the same blocks
    result['matmul_gflops_per_sec'] = matmul.gflops_per_sec(timings.seconds['matmul'])
    if result['achieved_gflops_per_sec'] is not None:
        result['fraction_of_matmul_rate'] = (
            result['achieved_gflops_per_sec'] / result['matmul_gflops_per_sec']
        )
    if mode == 'train':
        result['recipe'] = _recipe(config)
    if vs_timm:
        timm = timing.summarize(timings.seconds['timm'], batch)
        result.update(timing.prefixed('timm_', timm))
        result['ratio'] = result['images_per_sec'] / timm['images_per_sec']
        if result['xla_gflops_per_image'] is not None:  # timm does the same model FLOPs
            result['timm_fraction_of_matmul_rate'] = (
                result['xla_gflops_per_image']
                * timm['images_per_sec']
                / result['matmul_gflops_per_sec']
            )
        result['timm'] = timm_info
    if peak_tflops and result['achieved_gflops_per_sec'] is not None:
        result['peak_tflops'] = peak_tflops
        result['mfu'] = result['achieved_gflops_per_sec'] / (peak_tflops * 1e3)
        if vs_timm:
            timm_gflops = result['xla_gflops_per_image'] * result['timm_images_per_sec']
            result['timm_mfu'] = timm_gflops / (peak_tflops * 1e3)
    return timing.finish(result, timings)


# ----------------------------------------------------------------------------- sparse training


def amortized_step_seconds(regular: float, update: float, update_every: int) -> float:
    """Mean step time over ΔT steps of which one updates the topology."""
    return ((update_every - 1) * regular + update) / update_every


def sparse_train_overhead(
    config: ml_collections.ConfigDict,
    *,
    batch: int,
    steps: int,
    warmup: int = 2,
    block: int = 2,
    dtype: str | None = None,
    baseline: ml_collections.ConfigDict | None = None,
) -> dict[str, Any]:
    """The config's train step (its method, at `batch`) against the dense one, alternately.

    `baseline`: the config to compare with instead of the config's own dense counterpart (e.g.
    a wider dense model against a narrow dense one); its method must be dense.

    Regular steps and topology-update steps are timed separately (same executable, see
    `TrainBench`) and amortized over ΔT at this batch: t = ((ΔT−1)·t_regular + t_update)/ΔT.
    overhead = t / t_dense − 1; regular_overhead and update_overhead compare each kind of step
    alone. A dense config measures the dense step against itself (the noise floor).
    """
    config = jax_bench.with_batch(config, batch, dtype)
    sparse = jax_bench.TrainBench(config)
    if baseline is not None and method(baseline.sparsity.method).sparse:
        raise ValueError(f'the baseline must be a dense config, not {baseline.sparsity.method}')
    baseline = jax_bench.dense_counterpart(config) if baseline is None else baseline
    dense = jax_bench.TrainBench(jax_bench.with_batch(baseline, batch, dtype))
    rounds, per_block = timing.rounds_for(steps, block)
    update_every = sparse.update_every
    kwargs = dict(per_block=per_block, warmup=warmup)
    runners = [dense.runner('dense', **kwargs), sparse.runner('regular', 0, **kwargs)]
    if update_every is not None:
        runners.append(sparse.runner('update', update_every - 1, **kwargs))
    timings = timing.alternate(runners, rounds)
    if update_every is not None and sparse.last_update_step() != update_every:
        raise RuntimeError(
            f'the update steps did not update the topology (last update at step '
            f'{sparse.last_update_step()}, expected {update_every})'
        )
    sides = {
        name: _side(sparse if name != 'dense' else dense, timings.seconds[name], batch)
        for name in timings.seconds
    }
    median = {name: side['step_time_ms']['median'] for name, side in sides.items()}
    t = median['regular']
    if update_every is not None:
        t = amortized_step_seconds(median['regular'], median['update'], update_every)
    result = {
        'mode': 'train',
        'config_method': config.sparsity.method,
        'model': config.model.name,
        'batch': batch,
        'dtype': config.model.dtype,
        'update_every': update_every,
        'images_per_sec': batch / (t / 1e3),
        'dense_images_per_sec': sides['dense']['images_per_sec'],
        'step_time_ms': t,
        'overhead': t / median['dense'] - 1,
        'regular_overhead': median['regular'] / median['dense'] - 1,
        'update_overhead': None if update_every is None else median['update'] / median['dense'] - 1,
        'measurements': sides,
    }
    return timing.finish(result, timings)


# ----------------------------------------------------------------------------- inference


def _drop_tokens(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """The config's token selection in drop mode (tokens really removed), or None."""
    if not config.tokens.keep:
        return None
    return dict(config.tokens.to_dict(), mode='drop')


def deployed_model(config: ml_collections.ConfigDict, seed: int = 0) -> tuple[Any, Any, str]:
    """(model, random params, what it is) of the network a trained config runs at inference.

    Structured methods: the slim model of random head/neuron masks at the config's densities,
    through `slim_params` (improved fidelity: plain slicing; which units are kept does not
    change the cost). Token selection: drop mode. Unstructured methods: the same dense shapes
    with random zeros at the config's ERK densities (XLA multiplies the zeros all the same).
    """
    s = config.sparsity
    tokens = _drop_tokens(config)
    model = create_model_from_config(config.model, tokens)
    params = jax_bench.random_params(config, model, seed)
    kinds = ['tokens dropped'] if tokens else []
    key = jax.random.key(seed + 1)
    if method(s.method).structured:
        head_key, neuron_key = jax.random.split(key)
        depth = model.depth
        masks = {
            'heads': masks_lib.random_unit_masks(
                head_key, depth, model.heads_per_layer[0], s.head_density
            ),
            'neurons': masks_lib.random_unit_masks(
                neuron_key, depth, model.mlp_per_layer[0], s.neuron_density
            ),
        }
        params, overrides = slim_lib.slim_params(
            params, masks, fidelity='improved', head_dim=model.resolved_head_dim
        )
        model = create_model_from_config(
            slim_lib.slim_model_config(config.model, overrides), tokens
        )
        kinds.insert(0, 'slim')
    elif method(s.method).sparse:
        densities = masks_lib.layer_densities(params, s.density, s.distribution)
        weights = masks_lib.random_weight_masks(key, params, densities, exact=True)
        params = sparsity_state.apply_weight_masks(params, weights)
        kinds.insert(0, 'unstructured zeros in dense shapes')
    return model, params, ', '.join(kinds) or 'dense'


def _saving(value: float | None, dense: float | None) -> float | None:
    return None if value is None or not dense else 1.0 - value / dense


def inference_saving(
    config: ml_collections.ConfigDict,
    *,
    batch: int,
    steps: int,
    warmup: int = 2,
    block: int = 2,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The deployed model of a config (`deployed_model`) against the dense model, alternately.

    time_saving = 1 − t/t_dense; flops_saving: the paper convention (`flops.report_from_config`:
    kept heads with a full proj, k tokens, ERK-scaled weights); slim_flops_saving: the true
    MACs of the slim model; xla_flops_saving: XLA's counts of the two executables timed.
    time_over_flops_saving: time_saving / flops_saving (the goal is >= 0.8).
    """
    config = jax_bench.with_batch(config, batch, dtype)
    model, params, kind = deployed_model(config)
    deployed = jax_bench.InferBench(config, model, params, batch)
    dense_model = create_model_from_config(config.model)
    dense = jax_bench.InferBench(
        config, dense_model, jax_bench.random_params(config, dense_model), batch
    )
    rounds, per_block = timing.rounds_for(steps, block)
    kwargs = dict(per_block=per_block, warmup=warmup)
    timings = timing.alternate(
        [dense.runner('dense', **kwargs), deployed.runner('model', **kwargs)], rounds
    )
    sides = {
        'model': _side(deployed, timings.seconds['model'], batch),
        'dense': _side(dense, timings.seconds['dense'], batch),
    }
    t, t_dense = (sides[k]['step_time_ms']['median'] for k in ('model', 'dense'))
    report = flops.report_from_config(config, xla=False)
    time_saving = 1.0 - t / t_dense
    result = {
        'mode': 'infer',
        'config_method': config.sparsity.method,
        'model': config.model.name,
        'deployed': kind,
        'batch': batch,
        'dtype': config.model.dtype,
        'images_per_sec': sides['model']['images_per_sec'],
        'dense_images_per_sec': sides['dense']['images_per_sec'],
        'time_saving': time_saving,
        'flops_saving': report['saving'],
        'slim_flops_saving': _saving(report.get('slim_gmacs'), report['dense_gmacs']),
        'xla_flops_saving': _saving(
            sides['model']['xla_gflops_per_image'], sides['dense']['xla_gflops_per_image']
        ),
        'time_over_flops_saving': time_saving / report['saving'] if report['saving'] else None,
        'gmacs': report['gmacs'],
        'dense_gmacs': report['dense_gmacs'],
        'measurements': sides,
    }
    return timing.finish(result, timings)


# ----------------------------------------------------------------------------- a checkpoint


def checkpoint_speed(
    workdir: str, *, batch: int, steps: int, warmup: int = 2, dtype: str | None = None
) -> dict[str, Any]:
    """images/s of the evaluation forward of a workdir's checkpoint (e.g. a slim export): its
    own model and weights, restored onto this machine's devices whatever wrote them."""
    restored = restore_lib.restore_model(workdir)
    config = jax_bench.with_batch(restored.config, batch, dtype)
    config.mesh.update(data=-1, fsdp=restored.mesh.shape['fsdp'])  # a mesh these devices fit
    model = restore_lib.model_from_config(config)  # in the compute dtype asked for
    bench = jax_bench.InferBench(config, model, restored.params, batch)
    timings = timing.alternate([bench.runner('model', per_block=steps, warmup=warmup)], 1)
    result = dict(
        mode='infer',
        workdir=workdir,
        step=restored.step,
        model=config.model.name,
        batch=batch,
        dtype=config.model.dtype,
        warmup=warmup,
    )
    result.update(_side(bench, timings.seconds['model'], batch))
    return timing.finish(result, timings)
