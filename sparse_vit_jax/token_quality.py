"""How much a trained token selector's choice matters: the same checkpoint evaluated with the
tokens it selects, with random tokens, and with the tokens it ranks lowest.

A selector that learned nothing useful scores about as well with random tokens as with its own;
the gap between its own and the lowest-ranked tokens measures how much it has learned to tell
tokens apart. Only the input-level selector is changed (its scorer's params); the rest of the
model is the checkpoint's. Runs trained with zeroed tokens are also evaluated with the
unselected tokens dropped (what saves time at inference).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from sparse_vit_jax import data as data_lib
from sparse_vit_jax.data.device_input import DeviceInput
from sparse_vit_jax.models import create_model_from_config
from sparse_vit_jax.train import evaluation
from sparse_vit_jax.train.restore import restore_model


def _with_scorer(params: Any, scale: float) -> Any:
    """Params whose input-level scorer is multiplied by `scale` (0: every token scores alike;
    -1: the ranking reversed; the bias shifts every token alike and never matters)."""
    scorer = params['token_selector']['scorer']
    scaled = {k: jnp.asarray(v) * scale for k, v in scorer.items()}
    return {**params, 'token_selector': {**params['token_selector'], 'scorer': scaled}}


def selection_quality(workdir: str, data_dir: str | None = None) -> dict[str, Any]:
    """Top-1 of `workdir`'s latest checkpoint with its learned selection ('learned'), a uniformly
    random one ('random': a flat scorer under Gumbel noise), the lowest-ranked tokens ('lowest'),
    and for runs trained with zeroed tokens, its selection with the others dropped ('dropped')."""
    restored = restore_model(workdir, data_dir=data_dir)
    config = restored.config
    if not config.tokens.keep:
        raise ValueError(f'{workdir} selects no tokens (config.tokens.keep is 0)')
    _, eval_input = data_lib.make_inputs(config)
    mesh, params = restored.mesh, restored.params

    def top1(params: Any, **tokens: Any) -> float:
        model = create_model_from_config(config.model, dict(config.tokens.to_dict(), **tokens))
        eval_fn = evaluation.make_eval_fn(model, mesh, DeviceInput.from_config(config))
        gates = restored.forward_masks
        return evaluation.evaluate(eval_fn, params, gates, eval_input, mesh, config.seed)['top1']

    result = {
        'mode': config.tokens.mode,
        'keep': int(config.tokens.keep),
        'learned': top1(params),
        'random': top1(_with_scorer(params, 0.0), eval_mode='gumbel'),
        'lowest': top1(_with_scorer(params, -1.0), eval_mode='topk'),
    }
    if config.tokens.mode == 'zero':
        result['dropped'] = top1(params, mode='drop')
    return result
