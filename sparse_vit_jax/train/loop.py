"""The training loop: build everything from the config, resume if possible, train, evaluate, save.

Interruptions lose nothing: checkpoints are written atomically every `checkpoint_every_steps`,
a SIGTERM (how TPU VMs announce preemption) saves the current step and returns, and a restart
with the same workdir continues bit-identically (data position and every random stream are
functions of the step). A non-finite loss or gradient stops the run before anything non-finite
is saved.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import data as data_lib
from sparse_vit_jax import pretrained
from sparse_vit_jax.errors import CheckpointError, NonFiniteError
from sparse_vit_jax.layer_order import in_model_order
from sparse_vit_jax.models import create_model_from_config
from sparse_vit_jax.sparsity import api as sparsity_api
from sparse_vit_jax.train import evaluation
from sparse_vit_jax.train import optimizer as optimizer_lib
from sparse_vit_jax.train import sharding as sharding_lib
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.metrics import MetricWriter
from sparse_vit_jax.train.preemption import PreemptionWatcher
from sparse_vit_jax.train.state import TrainState, create_train_state, init_params
from sparse_vit_jax.train.throughput import Interval, StepTimer
from sparse_vit_jax.train.steps import make_train_step

logger = logging.getLogger(__name__)


def image_shape(config: ml_collections.ConfigDict) -> tuple:
    """(H, W, C) of the model's input: the configured size, one channel per normalization mean
    (the dataset check at start makes sure the data has them)."""
    return (config.model.image_size, config.model.image_size, len(config.data.mean))


def check_writable(workdir: str) -> None:
    """Fails early, before any work, when checkpoints could not be written."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise PermissionError(
            f'workdir {workdir} is not writable ({error.strerror}); choose another --workdir'
        ) from None


def _format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class Trainer:
    """One run: the model, optimizer, sharded state, input streams, checkpoints and metrics."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        config_lib.validate(config)
        check_writable(workdir)
        self.config, self.workdir = config, workdir
        self.mesh = sharding_lib.make_mesh(config.mesh)
        self.train_input, self.eval_input = data_lib.make_inputs(config)
        self.steps_per_epoch = self.train_input.steps_per_epoch
        self.total_steps = max(1, round(config.num_epochs * self.steps_per_epoch))
        self.model = create_model_from_config(config.model, config.tokens)
        shape = image_shape(config)
        key = jax.random.fold_in(jax.random.key(config.seed), 0x1417)
        self.init_params = lambda: init_params(self.model, key, shape)
        tx, self.lr_schedule, spec = optimizer_lib.make_optimizer(
            config,
            self.model,
            jax.eval_shape(self.init_params),
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
        )
        self.init_state = lambda params=None, head_taylor=None: create_train_state(
            self.model,
            tx,
            key,
            shape,
            ema=config.ema_decay > 0,
            fidelity=config.sparsity.fidelity,
            params=params,
            head_taylor=head_taylor,
        )
        # S²ViTE magnitude init keeps the heads with the largest Taylor scores on a batch.
        self.scores_heads = spec is not None and spec.structured and spec.init == 'magnitude'
        head_taylor = None
        if self.scores_heads:
            heads = (len(self.model.heads_per_layer), self.model.heads_per_layer[0])
            head_taylor = jax.ShapeDtypeStruct(heads, np.float32)
        self.abstract_state = jax.eval_shape(self.init_state, None, head_taylor)
        self.state_sharding = sharding_lib.state_shardings(
            self.abstract_state, self.mesh, config.mesh.fsdp_min_size
        )
        self.step_fn = make_train_step(config, self.model, tx, spec, self.total_steps)
        self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
        self.train_step = jax.jit(
            self.step_fn,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, sharding_lib.replicated(self.mesh)),
            donate_argnums=0,
        )
        self.eval_fn = evaluation.make_eval_fn(self.model, self.mesh)
        self.sparsity_summary = jax.jit(sparsity_api.summary)
        self.logged_update = -1
        self.checkpointer = Checkpointer(workdir, config.keep_checkpoints)
        self.writer = MetricWriter(workdir)
        self.meta = {
            'config': config.to_dict(),
            'total_steps': self.total_steps,
            'steps_per_epoch': self.steps_per_epoch,
            # tools/predict.py names classes by these even where the dataset is not at hand.
            'label_names': data_lib.label_names(config.data),
        }

    def fresh_state(self) -> TrainState:
        """The sharded state of step 0: fresh params, or config.init_from's weights adapted to
        the model; masks from them as config.sparsity.init says."""
        params = None
        if self.config.init_from:
            target = jax.jit(self.init_params)()
            params, report, source = pretrained.initial_params(self.config.init_from, target)
            logger.info('init_from %s: %s', source, '; '.join(report.lines()))
        head_taylor = None
        if self.scores_heads:
            start = params if params is not None else jax.jit(self.init_params)()
            batch = next(
                data_lib.prefetch_to_device(self.train_input.batches(0), self.batch_sharding)
            )
            scores = jax.jit(self.step_fn.initial_head_scores)(start, batch)
            head_taylor = scores['head_taylor']
        return jax.jit(self.init_state, out_shardings=self.state_sharding)(params, head_taylor)

    def restore_or_init(self) -> TrainState:
        """The latest checkpoint of this workdir if there is one, else a fresh sharded state."""
        if self.checkpointer.latest_step() is None:
            return self.fresh_state()
        if self.config.init_from:
            logger.info(
                'resuming from the checkpoints in %s: init_from=%s is ignored',
                self.checkpointer.directory,
                self.config.init_from,
            )
        saved = self.checkpointer.meta()
        if _architecture(saved['config']['model']) != _architecture(self.meta['config']['model']):
            raise CheckpointError(
                f'the checkpoints in {self.checkpointer.directory} were written for model '
                f'{_describe(saved["config"]["model"])}, but this config describes '
                f'{_describe(self.meta["config"]["model"])}. Use a new --workdir, or the '
                'config the run started with.'
            )
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract_state,
            self.state_sharding,
        )
        state = self.checkpointer.restore_state(target)
        logger.info('resumed from %s at step %d', self.checkpointer.directory, int(state.step))
        return state

    def check_finite(self, state: TrainState) -> None:
        bad = int(state.nonfinite_step)
        if bad >= 0:
            raise NonFiniteError(
                f'loss or gradient became NaN/Inf at step {bad + 1}; the run stopped without '
                f'saving it. Last good checkpoint: step {self.checkpointer.latest_step()} in '
                f'{self.checkpointer.directory}. Lower the learning rate or set '
                'config.optimizer.grad_clip_norm, then restart.'
            )

    def save(self, state: TrainState) -> None:
        self.check_finite(state)
        if self.checkpointer.latest_step() != int(state.step):
            self.checkpointer.save(state, self.meta)

    def evaluate(self, state: TrainState) -> dict[str, float]:
        self.check_finite(state)
        gates = self.step_fn.forward_masks(state.masks)
        evaluate = functools.partial(
            evaluation.evaluate,
            self.eval_fn,
            masks=gates,
            eval_input=self.eval_input,
            mesh=self.mesh,
            seed=self.config.seed,
        )
        results = evaluate(state.params)
        if state.ema_params is not None:
            ema = evaluate(state.ema_params)
            results.update({f'ema_{k}': v for k, v in ema.items()})
        self.writer.write(int(state.step), 'eval', results)
        logger.info(
            'eval at step %d: top1 %.4f top5 %.4f loss %.4f (%d examples)',
            int(state.step),
            results['top1'],
            results['top5'],
            results['loss'],
            results['num_examples'],
        )
        return results

    def log_train(self, state: TrainState, metrics: list[dict], timer: StepTimer) -> None:
        """Averages the interval's metrics (one host sync per log line) and writes them.

        img/s and the ETA come from `timer`, read after the fetch (the sync point): the steps
        since the previous log line over the time they took, the first step's compile,
        evaluations and this logging itself left out. The ETA is the time to the last train
        step at that pace.
        """
        self.check_finite(state)
        step = int(state.step)
        values = {k: float(np.mean([float(m[k]) for m in metrics])) for k in metrics[0]}
        interval = timer.lap()
        with timer.paused():  # writing (the first write sets TensorBoard up) is not training
            self._write_train(state, step, values, interval)

    def _write_train(self, state: TrainState, step: int, values: dict, interval: Interval) -> None:
        rate = interval.images_per_sec(self.config.batch_size)
        eta = interval.eta_seconds(self.total_steps - step)
        values.update(
            lr=float(self.lr_schedule(step - 1)),
            epoch=step / self.steps_per_epoch,
            skipped_examples=int(self.train_input.skipped.numpy()),
        )
        if rate is not None:
            values.update(images_per_sec=rate, eta_seconds=eta)
        self.writer.write(step, 'train', values)
        logger.info(
            'step %d/%d | loss %.4f | acc %.3f | lr %.3g | %s img/s | ETA %s',
            step,
            self.total_steps,
            values['loss'],
            values['accuracy'],
            values['lr'],
            '-' if rate is None else f'{rate:.3g}' if rate < 100 else f'{rate:.0f}',
            '-' if eta is None else _format_duration(eta),
        )
        self.log_sparsity(state)

    def log_sparsity(self, state: TrainState) -> None:
        """Writes the sparsity record when a topology update happened since the last one."""
        values = self.sparsity_summary(state.opt_state)
        if values is None or int(values['last_update_step']) == self.logged_update:
            return
        self.logged_update = int(values['last_update_step'])
        for per_layer in ('layer_density', 'layer_moved'):  # jit returns dicts in text order
            values[per_layer] = in_model_order(values[per_layer])
        self.writer.write(int(state.step), 'sparsity', values)
        logger.info(
            'sparsity at step %d: density %.4f, fired %.4f, %d weights moved at step %d',
            int(state.step),
            float(values['density']),
            float(values['fired_density']),
            int(values['moved']),
            self.logged_update,
        )

    def run(self) -> dict[str, Any]:
        """Trains to the end (or until preempted) and returns the final eval metrics."""
        try:
            return self._run()
        finally:  # whatever stops the run, saves already started complete
            self.checkpointer.wait()

    def _run(self) -> dict[str, Any]:
        c = self.config
        state = self.restore_or_init()
        start_step = int(state.step)
        eval_every = max(1, round(c.eval_every_epochs * self.steps_per_epoch))
        logger.info(
            'training %s for %d steps (%d per epoch, global batch %d) on %d devices, mesh %s',
            c.model.name,
            self.total_steps,
            self.steps_per_epoch,
            c.batch_size,
            jax.device_count(),
            dict(self.mesh.shape),
        )
        batches = data_lib.prefetch_to_device(
            self.train_input.batches(start_step), self.batch_sharding
        )
        pending, timer, run_start = [], StepTimer(), time.perf_counter()
        with PreemptionWatcher() as preemption:
            for step in range(start_step, self.total_steps):
                state, metrics = self.train_step(state, next(batches))
                pending.append(metrics)
                if step == start_step:  # compiled and ran: the only sync made just for timing
                    jax.block_until_ready(metrics)
                    timer.start()
                else:
                    timer.step()
                done = step + 1
                if done % c.log_every_steps == 0 or done == self.total_steps:
                    self.log_train(state, pending, timer)
                    pending = []
                if preemption.requested(done):
                    self.save(state)
                    logger.warning('preempted: saved step %d; restart to continue', done)
                    return {'step': done, 'preempted': True}
                if done % eval_every == 0 and done != self.total_steps:
                    jax.block_until_ready(state)  # the train steps so far count as training
                    with timer.paused():
                        self.evaluate(state)
                if done % c.checkpoint_every_steps == 0:
                    self.save(state)
        self.save(state)
        results = self.evaluate(state)
        results.update(step=int(state.step), train_seconds=time.perf_counter() - run_start)
        return results


def _architecture(model_config: dict) -> dict:
    """The model section minus `remat`, which trades memory for compute without changing the
    function (a run may resume with it changed; checkpoints from before it existed lack it)."""
    return {k: v for k, v in model_config.items() if k != 'remat'}


def _describe(model_config: dict) -> str:
    keys = ('name', 'embed_dim', 'depth', 'num_heads', 'mlp_dim', 'image_size', 'num_classes')
    return '(' + ', '.join(f'{k}={model_config.get(k)}' for k in keys) + ')'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from the latest checkpoint in `workdir`) and returns the final eval
    metrics; after a preemption, returns {'step', 'preempted': True} once the save is done."""
    return Trainer(config, workdir).run()
