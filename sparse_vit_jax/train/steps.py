"""Pure train and eval steps (jit them with shardings; they read no globals).

One train step: fold the step into the run's key and split it by purpose, turn the batch's
uint8 images into normalized model inputs (random-erasing boxes filled), forward with the
masks the optimizer state holds, loss against (smoothed, optionally mixed) targets, dense
gradients, the optimizer update (the sparse transformation prunes and grows inside it), and a
non-finite guard that keeps the last finite state and records the step that went bad.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sparse_vit_jax import config as config_lib
from sparse_vit_jax.data import mixup
from sparse_vit_jax.data.device_input import DeviceInput, model_images
from sparse_vit_jax.data.mixup import smooth_labels
from sparse_vit_jax.layer_order import block_names
from sparse_vit_jax.models.vit import HEAD_OUTPUTS
from sparse_vit_jax.sparsity import state as sparsity_state
from sparse_vit_jax.sparsity import schedules
from sparse_vit_jax.train.state import TrainState

# Independent random streams, one per purpose, all derived from (seed, step). New ones go last:
# with partitionable Threefry the first streams keep their keys when one is added.
STREAMS = ('dropout', 'gumbel', 'mixup', 'sparsity', 'erasing')


def step_keys(seed: int, step: jax.Array) -> dict[str, jax.Array]:
    key = jax.random.fold_in(jax.random.key(seed), step)
    return dict(zip(STREAMS, jax.random.split(key, len(STREAMS))))


def head_scores(
    head_outputs: list[jax.Array], output_grads: list[jax.Array]
) -> dict[str, jax.Array]:
    """S²ViTE head scores per block, [depth, heads]: the first-order Taylor importance
    mean_b |Σ_{n,d} A·∂L/∂A| and the output-gradient L1 norm mean_b Σ_{n,d} |∂L/∂A|.

    Products and sums are float32 whatever the compute dtype: heads are ranked by these
    scores, and bfloat16 sums over N·hd·B terms would turn near-ties into exact ties.
    """
    head_outputs = [a.astype(jnp.float32) for a in head_outputs]
    output_grads = [g.astype(jnp.float32) for g in output_grads]
    taylor = [
        jnp.abs(jnp.sum(a * g, axis=(1, 3))).mean(0) for a, g in zip(head_outputs, output_grads)
    ]
    norms = [jnp.abs(g).sum(axis=(1, 3)).mean(0) for g in output_grads]
    return {'head_taylor': jnp.stack(taylor), 'head_grad_norm': jnp.stack(norms)}


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """Everything a train step needs besides the state and the batch.

    Attributes:
      fidelity: config.sparsity.fidelity. It decides which of the optimizer's masks the forward
        pass takes (`sparsity.state.forward_masks`: the head/neuron gates in improved structured
        runs, else none, the weights carrying the zeros) and whose zeros the params and their
        EMA hold (`sparsity.state.zeroed_masks`).
      needs_head_scores: whether the optimizer wants S²ViTE head scores at update steps.
      needs_neuron_gate_grads: whether it wants the loss gradient at the neuron gates
        (improved S²ViTE growth); the forward pass then takes float gates.
      inputs: how the batch's uint8 images become model inputs (normalization, random-erasing
        fill); None takes batch['image'] as the model input (already normalized floats).
      mix: optional (key, images, labels) -> (images, soft targets) on device (Mixup/CutMix).
      tau: optional step -> Gumbel temperature for the token selector.
    """

    model: Any
    tx: optax.GradientTransformation
    seed: int
    num_classes: int
    label_smoothing: float
    fidelity: str = 'reference'
    needs_head_scores: bool = False
    needs_neuron_gate_grads: bool = False
    inputs: DeviceInput | None = None
    mix: Callable | None = None
    tau: Callable | None = None
    ema_decay: float = 0.0

    def forward_masks(self, masks: dict | None) -> dict | None:
        """The masks the forward pass takes of the optimizer's `masks`."""
        return sparsity_state.forward_masks(masks, self.fidelity)

    def _targets(self, keys, batch):
        """The model inputs and soft targets of a batch: its images normalized (and erased),
        then mixed, or its labels smoothed."""
        images = model_images(batch, self.inputs, keys['erasing'])
        if self.mix is not None:
            return self.mix(keys['mixup'], images, batch['label'])
        return images, smooth_labels(batch['label'], self.num_classes, self.label_smoothing)

    def _gradients(self, params, masks, images, targets, keys, step, gate_grads: bool):
        """Loss, logits, dense gradients and the scores the optimizer wants at `params`: S²ViTE
        head scores (when wanted) and, with `gate_grads`, the loss gradient at the neuron gates."""
        extra = {} if self.tau is None else {'tau': self.tau(step)}
        rngs = {'dropout': keys['dropout'], 'gumbel': keys['gumbel']}

        def forward(params, perturbations=None, gates=None):
            """Logits and, when head scores are wanted, the head outputs (sown by the model)."""
            masks_in = masks if gates is None else {**masks, 'neurons': gates}
            if not self.needs_head_scores:
                return self.model.apply(
                    {'params': params}, images, masks=masks_in, train=True, rngs=rngs, **extra
                ), {}
            variables = {'params': params}
            if perturbations is not None:
                variables['perturbations'] = perturbations
            logits, inter = self.model.apply(
                variables,
                images,
                masks=masks_in,
                train=True,
                rngs=rngs,
                mutable=['intermediates'],
                **extra,
            )
            return logits, inter['intermediates']

        def loss_fn(params, perturbations, gates):
            logits, inter = forward(params, perturbations, gates)
            loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (logits, inter)

        perturbations = None
        if self.needs_head_scores:
            # Zeros shaped like the head outputs: their gradient is ∂L/∂(head outputs).
            sown = jax.eval_shape(lambda p: forward(p)[1], params)
            perturbations = jax.tree.map(
                lambda t: jnp.zeros(t[0].shape, t[0].dtype),
                sown,
                is_leaf=lambda x: isinstance(x, tuple),
            )
        # Float 0/1 neuron gates: their gradient is ∂L/∂gate (the forward value is unchanged).
        gates = masks['neurons'].astype(jnp.float32) if gate_grads else None
        (loss, (logits, inter)), (grads, output_grads, at_gates) = jax.value_and_grad(
            loss_fn, argnums=(0, 1, 2), has_aux=True
        )(params, perturbations, gates)
        scores = {}
        if self.needs_head_scores:
            blocks = block_names(output_grads)
            scores = head_scores(
                [inter[b]['attn'][HEAD_OUTPUTS][0] for b in blocks],
                [output_grads[b]['attn'][HEAD_OUTPUTS] for b in blocks],
            )
        if gate_grads:
            scores['neuron_gate_grad'] = at_gates
        return loss, logits, grads, scores

    def initial_head_scores(self, params: Any, batch: dict[str, jax.Array]) -> dict:
        """The S²ViTE head scores of `params` (every unit active) on the batch of step 0, as the
        first step computes them: what magnitude init from trained weights keeps heads by."""
        step = jnp.zeros((), jnp.int32)
        keys = step_keys(self.seed, step)
        images, targets = self._targets(keys, batch)
        scoring = dataclasses.replace(self, needs_head_scores=True)  # static runs score too
        return scoring._gradients(params, None, images, targets, keys, step, gate_grads=False)[3]

    def __call__(self, state: TrainState, batch: dict[str, jax.Array]):
        keys = step_keys(self.seed, state.step)
        images, targets = self._targets(keys, batch)
        loss, logits, grads, update_args = self._gradients(
            state.params,
            self.forward_masks(state.masks),
            images,
            targets,
            keys,
            state.step,
            gate_grads=self.needs_neuron_gate_grads,
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params, **update_args)
        params = optax.apply_updates(state.params, updates)

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if self.ema_decay:
            ema = jax.tree.map(
                lambda e, p: self.ema_decay * e + (1 - self.ema_decay) * p, state.ema_params, params
            )
            # The EMA of a sparse run is the sparse model: held to the same zeros as the params
            # (a pruned weight's average would otherwise decay towards 0 but never reach it).
            zeroed = sparsity_state.zeroed_masks(sparsity_state.masks_of(opt_state), self.fidelity)
            if zeroed is not None:
                ema = sparsity_state.apply_weight_masks(ema, zeroed)
            new_state = new_state.replace(ema_params=ema)
        # Non-finite guard: keep the last finite state (so no non-finite checkpoint can ever be
        # written) and remember the first step that went bad; the loop stops on it.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        new_state = new_state.replace(
            nonfinite_step=jnp.where(
                (state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step
            )
        )
        metrics = {
            'loss': loss,
            'accuracy': jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)),
            'grad_norm': grad_norm,
        }
        return new_state, metrics


def mixup_fn(config: ml_collections.ConfigDict):
    """Mixup/CutMix on device (timm's batch mode with label smoothing), or None when off."""
    if not config_lib.mixup_enabled(config):
        return None
    m = config.mixup
    return functools.partial(
        mixup.mixup_cutmix,
        num_classes=config.model.num_classes,
        mixup_alpha=m.mixup_alpha,
        cutmix_alpha=m.cutmix_alpha,
        prob=m.prob,
        switch_prob=m.switch_prob,
        label_smoothing=config.label_smoothing,
    )


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


def make_train_step(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: Any,
    spec: Any,
    total_steps: int,
) -> TrainStep:
    """The run's train step (unjitted): the model, `make_optimizer`'s transformation and spec,
    masks as the fidelity feeds them forward, Mixup/CutMix and the token temperature schedule.

    Shared by the Trainer and tools/benchmark.py, so what is timed is what trains.
    """
    return TrainStep(
        model,
        tx,
        seed=config.seed,
        num_classes=config.model.num_classes,
        label_smoothing=config.label_smoothing,
        fidelity=config.sparsity.fidelity,
        needs_head_scores=spec is not None and spec.needs_head_scores,
        needs_neuron_gate_grads=spec is not None and spec.needs_neuron_gate_grads,
        inputs=DeviceInput.from_config(config),
        mix=mixup_fn(config),
        tau=token_temperature(config, total_steps),
        ema_decay=config.ema_decay,
    )


def eval_step(
    model: Any,
    params: Any,
    masks: Any,
    batch: dict[str, jax.Array],
    rng: jax.Array | None = None,
    *,
    inputs: DeviceInput | None = None,
) -> dict[str, jax.Array]:
    """Sums over the real (unpadded) examples of a batch: count, loss, top-1 and top-5 hits.

    `rng` feeds the 'gumbel' stream: the reference token selector draws fresh noise at eval.
    `inputs` normalizes the batch's uint8 images (None: they are normalized floats already).
    """
    rngs = {} if rng is None else {'gumbel': rng}
    images = model_images(batch, inputs)
    logits = model.apply({'params': params}, images, masks=masks, train=False, rngs=rngs)
    weight = batch['mask'].astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        'count': weight.sum(),
        'loss': (loss * weight).sum(),
        'top1': ((jnp.argmax(logits, -1) == batch['label']) * weight).sum(),
        'top5': ((top5 == batch['label'][:, None]).any(-1) * weight).sum(),
    }
