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
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import data as data_lib
from sparse_vit_jax import paths, pretrained
from sparse_vit_jax.data.device_input import DeviceInput
from sparse_vit_jax.errors import NonFiniteError, UserError
from sparse_vit_jax.layer_order import in_model_order
from sparse_vit_jax.models import create_model_from_config, input_shape
from sparse_vit_jax.sparsity import state as sparsity_state
from sparse_vit_jax.train import evaluation
from sparse_vit_jax.train import optimizer as optimizer_lib
from sparse_vit_jax.train import record as record_lib
from sparse_vit_jax.train import restore as restore_lib
from sparse_vit_jax.train import sharding as sharding_lib
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.lease import Lease
from sparse_vit_jax.train.metrics import MetricWriter
from sparse_vit_jax.train.preemption import PreemptionWatcher
from sparse_vit_jax.train.state import TrainState, create_train_state, init_params
from sparse_vit_jax.train.throughput import Interval, StepTimer
from sparse_vit_jax.train.steps import make_train_step

logger = logging.getLogger(__name__)


def check_processes_agree(**values: int) -> None:
    """Every process must compute the same step counts (else they deadlock at the end of the
    shortest); refuses a disagreement in one line, before step 1."""
    if jax.process_count() == 1:
        return
    local = np.asarray(list(values.values()), np.int64)
    everyone = np.asarray(multihost_utils.process_allgather(local))
    if (everyone != everyone[0]).any():
        per_process = '; '.join(
            f'process {i}: ' + ', '.join(f'{k}={v}' for k, v in zip(values, row))
            for i, row in enumerate(everyone.tolist())
        )
        raise ValueError(
            f'the processes disagree on the length of the run ({per_process}); give every '
            'process the same config and the same prepared dataset'
        )


def _format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class Trainer:
    """One run: the model, optimizer, sharded state, input streams, checkpoints and metrics."""

    def __init__(
        self, config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
    ):
        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        self.allow_config_change = allow_config_change
        self.mesh = sharding_lib.make_mesh(config.mesh)
        self.train_input, self.eval_input = data_lib.make_inputs(config)
        self.steps_per_epoch = self.train_input.steps_per_epoch
        self.total_steps = max(1, round(config.num_epochs * self.steps_per_epoch))
        check_processes_agree(steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        self.model = create_model_from_config(config.model, config.tokens)
        shape = input_shape(config)
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
        self.eval_fn = evaluation.make_eval_fn(
            self.model, self.mesh, DeviceInput.from_config(config)
        )
        self.sparsity_summary = jax.jit(sparsity_state.summary)
        self.logged_update = -1
        self.checkpointer: Checkpointer | None = None  # opened by `run`, under the lease
        self.writer: MetricWriter | None = None
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
        """The latest checkpoint of this workdir if there is one, else a fresh sharded state.

        The run record is checked first (a refused config change reads nothing) and written
        once the state is there (a checkpoint that cannot be restored changes no record).
        """
        latest = self.checkpointer.latest_step()
        record = record_lib.prepare(
            self.workdir,
            self.meta['config'],
            resume_step=latest,
            previous_config=None if latest is None else self.checkpointer.meta()['config'],
            allow_change=self.allow_config_change,
        )
        if latest is None:
            state = self.fresh_state()
        else:
            if self.config.init_from:
                logger.info(
                    'resuming from the checkpoints in %s: init_from=%s is ignored',
                    self.checkpointer.directory,
                    self.config.init_from,
                )
            state = restore_lib.restore_train_state(
                self.checkpointer, self.abstract_state, self.state_sharding
            )
            logger.info('resumed from %s at step %d', self.checkpointer.directory, int(state.step))
        record_lib.write(self.workdir, record)  # only once the run really starts or resumes
        logger.info(
            'config:\n%s',
            '\n'.join(f'  {k} = {v!r}' for k, v in record_lib.flatten(self.meta['config']).items()),
        )
        return state

    def last_good(self) -> str:
        step = self.checkpointer.latest_step()
        if step is None:
            return f'No checkpoint was saved yet (in {self.checkpointer.directory})'
        return f'The last good checkpoint is step {step} in {self.checkpointer.directory}'

    def check_finite(self, state: TrainState) -> None:
        bad = int(state.nonfinite_step)
        if bad >= 0:
            raise NonFiniteError(
                f'loss or gradient became NaN/Inf at step {bad + 1}; the run stopped without '
                f'saving it. {self.last_good()}. Lower the learning rate or set '
                'config.optimizer.grad_clip_norm, then restart.'
            )

    def save(self, state: TrainState) -> None:
        self.check_finite(state)
        if self.checkpointer.latest_step() != int(state.step):
            self.checkpointer.save(state, self.meta)
        self.writer.flush(force=True)

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
        self.writer.flush(force=True)
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
        self.lease.check()
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
            'step %d/%d | epoch %.2f | loss %.4f | acc %.3f | lr %.3g | %s img/s | ETA %s | '
            'elapsed %s',
            step,
            self.total_steps,
            values['epoch'],
            values['loss'],
            values['accuracy'],
            values['lr'],
            '-' if rate is None else f'{rate:.3g}' if rate < 100 else f'{rate:.0f}',
            '-' if eta is None else _format_duration(eta),
            _format_duration(time.perf_counter() - self.run_start),
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
        """Trains to the end (or until preempted) and returns the final eval metrics.

        Holds the workdir's lease throughout; whatever stops the run, a save already started
        completes, and metrics reach the workdir.
        """
        self.lease = Lease(self.workdir)
        self.lease.acquire()
        try:
            self.checkpointer = Checkpointer(self.workdir, self.config.keep_checkpoints)
            try:
                results = self._run()
            except BaseException:
                self._close(quiet=True)
                raise
            self._close()
            return results
        except Exception as error:  # a full disk meets whichever writer comes first
            if isinstance(error, UserError) or self.checkpointer is None:
                raise
            if not paths.is_disk_full(error):
                raise
            written = re.search(
                rf'{re.escape(str(paths.resolve(self.workdir)))}[^\s;:\'"]*', str(error)
            )
            what = written.group(0) if written else f'to {self.workdir}'
            raise self.checkpointer.disk_full_error(what) from None
        finally:
            self.lease.release()

    def _close(self, quiet: bool = False) -> None:
        """Completes the save in flight and uploads the metrics; `quiet` while another error
        is on its way (a failed save then stays unreported: the earlier error explains it)."""
        try:
            self.checkpointer.close()
        except Exception:
            if not quiet:
                raise
        finally:
            if self.writer is not None:
                self.writer.close()

    def _run(self) -> dict[str, Any]:
        c = self.config
        state = self.restore_or_init()
        start_step = int(state.step)
        self.writer = MetricWriter(self.workdir, resume_step=start_step)
        eval_every = max(1, round(c.eval_every_epochs * self.steps_per_epoch))
        logger.info('config, as resolved:\n%s', c)
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
        pending, timer = [], StepTimer()
        self.run_start = time.perf_counter()
        with PreemptionWatcher() as preemption:
            for step in range(start_step, self.total_steps):
                if step == start_step:
                    logger.info('compiling the train step (the first step waits for it)')
                    compile_start = time.perf_counter()
                state, metrics = self.train_step(state, next(batches))
                pending.append(metrics)
                if step == start_step:  # compiled and ran: the only sync made just for timing
                    jax.block_until_ready(metrics)
                    timer.start()
                    logger.info(
                        'train step compiled: the first step took %.1f s, compile included',
                        time.perf_counter() - compile_start,
                    )
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
        results.update(step=int(state.step), train_seconds=time.perf_counter() - self.run_start)
        return results


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> dict[str, Any]:
    """Trains (resuming from the latest checkpoint in `workdir`) and returns the final eval
    metrics; after a preemption, returns {'step', 'preempted': True} once the save is done.

    allow_config_change: resume even though the config changes the run's mathematics (the
    change is recorded in the run record, `config.json`).
    """
    return Trainer(config, workdir, allow_config_change).run()
