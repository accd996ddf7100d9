"""The training loop: build everything from the config, resume if possible, train, evaluate, save."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import data as data_lib
from sparse_vit_jax.models import create_model_from_config
from sparse_vit_jax.sparsity import api as sparsity_api
from sparse_vit_jax.sparsity import schedules
from sparse_vit_jax.train import evaluation
from sparse_vit_jax.train import optimizer as optimizer_lib
from sparse_vit_jax.train import sharding as sharding_lib
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.metrics import MetricWriter
from sparse_vit_jax.train.state import TrainState, create_train_state, init_params
from sparse_vit_jax.train.steps import TrainStep

logger = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """The loss or the gradient stopped being finite."""


def image_shape(config: ml_collections.ConfigDict, train_input: data_lib.TrainInput) -> tuple:
    shape = train_input.builder.info.features['image'].shape
    channels = shape[-1] if shape and shape[-1] else 3
    return (config.model.image_size, config.model.image_size, channels)


def _format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


def token_temperature(config: ml_collections.ConfigDict, total_steps: int):
    """step -> Gumbel temperature of the token selector (linear, config.tokens.tau_start to
    tau_end over the run), or None when the run selects no tokens."""
    if not config.tokens.keep:
        return None
    return functools.partial(
        schedules.gumbel_temperature,
        total_steps=total_steps,
        start=config.tokens.tau_start,
        end=config.tokens.tau_end,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from the latest checkpoint in `workdir`) and returns the final eval metrics."""
    config_lib.validate(config)
    mesh = sharding_lib.make_mesh(config.mesh)
    train_input, eval_input = data_lib.make_inputs(config)
    steps_per_epoch = train_input.steps_per_epoch
    total_steps = max(1, round(config.num_epochs * steps_per_epoch))
    model = create_model_from_config(config.model, config.tokens)
    shape = image_shape(config, train_input)
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0x1417)

    params_shape = jax.eval_shape(lambda: init_params(model, init_key, shape))
    tx, lr_schedule, spec = optimizer_lib.make_optimizer(
        config, model, params_shape, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )

    def init_state():
        return create_train_state(model, tx, init_key, shape, ema=config.ema_decay > 0)

    abstract_state = jax.eval_shape(init_state)
    state_sharding = sharding_lib.state_shardings(abstract_state, mesh, config.mesh.fsdp_min_size)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            state_sharding,
        )
        state = checkpointer.restore_state(target)
        logger.info('resumed from %s at step %d', checkpointer.directory, int(state.step))
    else:
        state = jax.jit(init_state, out_shardings=state_sharding)()

    step_fn = TrainStep(
        model,
        tx,
        seed=config.seed,
        num_classes=config.model.num_classes,
        label_smoothing=config.label_smoothing,
        forward_masks=functools.partial(
            sparsity_api.forward_masks, fidelity=config.sparsity.fidelity
        ),
        needs_head_scores=spec is not None and spec.structured,
        tau=token_temperature(config, total_steps),
        ema_decay=config.ema_decay,
    )
    batch_sharding = sharding_lib.batch_sharding(mesh)
    train_step = jax.jit(
        step_fn,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, sharding_lib.replicated(mesh)),
        donate_argnums=0,
    )
    eval_fn = evaluation.make_eval_fn(model, mesh)
    sparsity_summary = jax.jit(sparsity_api.summary)
    logged_update = -1

    def log_sparsity(state: TrainState) -> None:
        """Writes the sparsity record when a topology update happened since the last one."""
        nonlocal logged_update
        values = sparsity_summary(state.opt_state)
        if values is None or int(values['last_update_step']) == logged_update:
            return
        logged_update = int(values['last_update_step'])
        writer.write(int(state.step), 'sparsity', values)
        logger.info(
            'sparsity at step %d: density %.4f, fired %.4f, %d weights moved at step %d',
            int(state.step),
            float(values['density']),
            float(values['fired_density']),
            int(values['moved']),
            logged_update,
        )

    writer = MetricWriter(workdir)
    meta = {
        'config': config.to_dict(),
        'total_steps': total_steps,
        'steps_per_epoch': steps_per_epoch,
    }
    eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))

    def check_finite(state: TrainState) -> None:
        bad = int(state.nonfinite_step)
        if bad >= 0:
            last = checkpointer.latest_step()
            raise NonFiniteError(
                f'loss or gradient became NaN/Inf at step {bad}; the run stopped without saving it. '
                f'Last good checkpoint: step {last} in {checkpointer.directory}. Lower the learning '
                'rate or enable config.optimizer.grad_clip_norm, then restart.'
            )

    def run_eval(state: TrainState) -> dict[str, float]:
        gates = step_fn.forward_masks(state.masks)
        results = evaluation.evaluate(eval_fn, state.params, gates, eval_input, mesh, config.seed)
        if state.ema_params is not None:
            ema = evaluation.evaluate(
                eval_fn, state.ema_params, gates, eval_input, mesh, config.seed
            )
            results.update({f'ema_{k}': v for k, v in ema.items()})
        writer.write(int(state.step), 'eval', results)
        logger.info(
            'eval at step %d: top1 %.4f top5 %.4f loss %.4f (%d examples)',
            int(state.step),
            results['top1'],
            results['top5'],
            results['loss'],
            results['num_examples'],
        )
        return results

    start_step = int(state.step)
    logger.info(
        'training %s for %d steps (%d per epoch, global batch %d) on %d devices, mesh %s',
        config.model.name,
        total_steps,
        steps_per_epoch,
        config.batch_size,
        jax.device_count(),
        dict(mesh.shape),
    )
    batches = data_lib.prefetch_to_device(train_input.batches(start_step), batch_sharding)
    pending: list[dict[str, jax.Array]] = []
    interval_start, interval_step, run_start = time.perf_counter(), start_step, time.perf_counter()
    results: dict[str, Any] = {}
    for step in range(start_step, total_steps):
        state, metrics = train_step(state, next(batches))
        pending.append(metrics)
        done = step + 1
        if done % config.log_every_steps == 0 or done == total_steps:
            check_finite(state)
            values = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
            pending = []
            now = time.perf_counter()
            rate = (done - interval_step) * config.batch_size / (now - interval_start)
            values.update(
                lr=float(lr_schedule(done - 1)), images_per_sec=rate, epoch=done / steps_per_epoch
            )
            writer.write(done, 'train', values)
            log_sparsity(state)
            eta = (total_steps - done) * config.batch_size / rate
            logger.info(
                'step %d/%d | loss %.4f | acc %.3f | lr %.3g | %.0f img/s | ETA %s',
                done,
                total_steps,
                values['loss'],
                values['accuracy'],
                values['lr'],
                rate,
                _format_duration(eta),
            )
            interval_start, interval_step = time.perf_counter(), done
        if done % eval_every == 0 and done != total_steps:
            check_finite(state)
            run_eval(state)
        if done % config.checkpoint_every_steps == 0 and done != total_steps:
            check_finite(state)
            checkpointer.save(state, meta)
    check_finite(state)
    if checkpointer.latest_step() != int(state.step):
        checkpointer.save(state, meta)
    results = run_eval(state)
    checkpointer.wait()
    results.update(step=int(state.step), train_seconds=time.perf_counter() - run_start)
    return results
