"""The Fashion-MNIST study: which runs it has, their log, and the table over seeds.

Every row is `configs/fashion_mnist.py:<args>` (plus dotted config overrides) trained with
several seeds. Finished runs are appended to a JSON-lines log, one record per (row, seed), so an
interrupted study loses nothing and a restart skips what is done (`tools/compare_fashion.py`
drives it). Summaries are means ± sample standard deviations over the seeds run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from typing import Any, Iterable

from sparse_vit_jax import paths


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the study.

    Attributes:
      name: short id (workdirs are RUNS/<name>_s<seed>).
      args: `configs/fashion_mnist.py` args, e.g. 'method=svite,density=0.5,fidelity=improved'.
      description: what the row is, for the table.
      family: the method family, one marker style per family in the figure.
      seeds: how many seeds (0, 1, ...) the study runs: 3, enough to resolve the rows' spread.
      overrides: extra `--config.<field>=<value>` settings (e.g. 'tokens.mode=zero').
    """

    name: str
    args: str
    description: str
    family: str
    seeds: int = 3
    overrides: tuple[str, ...] = ()

    def config_arg(self, seed: int) -> str:
        return f'configs/fashion_mnist.py:{self.args},seed={seed}'

    def flags(self) -> list[str]:
        return [f'--config.{override}' for override in self.overrides]

    @property
    def key(self) -> str:
        """What identifies the run's mathematics in the log (a changed row is run again)."""
        return ' '.join([self.args, *self.overrides])


_S2 = 'head_density=0.7,neuron_density=0.7'
_TOKENS = 'method=sviteplus,density=1.0,keep_tokens=15,fidelity=improved'

STUDY = (
    Row('dense', 'method=dense', 'dense ViT (width 64)', 'dense'),
    Row('small_dense', 'method=dense,width=44', 'small dense ViT (width 44)', 'dense'),
    Row('static_0.5', 'method=static,density=0.5', 'static sparse, density 0.5', 'static'),
    Row('svite_0.5_ref', 'method=svite,density=0.5', 'SViTE 0.5, reference', 'svite'),
    Row(
        'svite_0.5_imp',
        'method=svite,density=0.5,fidelity=improved',
        'SViTE 0.5, improved',
        'svite',
    ),
    Row(
        'svite_0.5_imp_2x',
        'method=svite,density=0.5,fidelity=improved,epochs=30.0',
        'SViTE 0.5, improved, 2× epochs',
        'svite',
    ),
    Row(
        's2static_ref',
        f'method=s2static,{_S2}',
        'static heads/neurons 0.7, reference',
        's2static',
    ),
    Row(
        's2static_imp',
        f'method=s2static,{_S2},fidelity=improved',
        'static heads/neurons 0.7, improved',
        's2static',
    ),
    Row('s2vite_ref', f'method=s2vite,{_S2}', 'S²ViTE 0.7/0.7, reference', 's2vite'),
    Row(
        's2vite_imp',
        f'method=s2vite,{_S2},fidelity=improved',
        'S²ViTE 0.7/0.7, improved',
        's2vite',
    ),
    Row(
        'tokens_drop',
        _TOKENS,
        'tokens only, 15/17, drop',
        'tokens',
        overrides=('tokens.mode=drop',),
    ),
    Row(
        'tokens_zero',
        _TOKENS,
        'tokens only, 15/17, zero',
        'tokens',
        overrides=('tokens.mode=zero',),
    ),
    Row(
        'tokens_mask',
        _TOKENS,
        'tokens only, 15/17, mask',
        'tokens',
        overrides=('tokens.mode=mask',),
    ),
)

# Runs that decide a setting rather than answer the study's questions: the Adam moments of
# regrown weights in improved SViTE (improved resets them; this row keeps their history), and the
# paper's own knobs tried on SViTE 0.5.
ABLATIONS = (
    Row(
        'svite_0.5_imp_keep',
        'method=svite,density=0.5,fidelity=improved',
        'SViTE 0.5, improved, moments of regrown weights kept',
        'svite',
        2,
        ('sparsity.regrown_moments=keep',),
    ),
    # Tuning, one seed each: ΔT 800 or 1600 steps instead of 200 (update_every is at batch 128),
    # a prune rate starting at 0.2 instead of 0.5, updates ending at half the run.
    Row(
        'svite_0.5_ref_dt800',
        'method=svite,density=0.5',
        'SViTE 0.5, reference, ΔT 800',
        'svite',
        1,
        ('sparsity.update_every=400',),
    ),
    Row(
        'svite_0.5_ref_rate0.2',
        'method=svite,density=0.5',
        'SViTE 0.5, reference, prune rate 0.2',
        'svite',
        1,
        ('sparsity.prune_rate=0.2',),
    ),
    Row(
        'svite_0.5_ref_dt1600',
        'method=svite,density=0.5',
        'SViTE 0.5, reference, ΔT 1600',
        'svite',
        1,
        ('sparsity.update_every=800',),
    ),
    Row(
        'svite_0.5_ref_dt800_tend0.5',
        'method=svite,density=0.5',
        'SViTE 0.5, reference, ΔT 800, t_end 0.5',
        'svite',
        1,
        ('sparsity.update_every=400', 'sparsity.t_end=0.5'),
    ),
)

ROWS = {row.name: row for row in STUDY + ABLATIONS}


def read_log(path: str) -> list[dict[str, Any]]:
    """The records of a run log, local or in a bucket (missing file: none); a torn last line is
    ignored."""
    log = paths.resolve(path)
    if not log.exists():
        return []
    records = []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_log(path: str, record: dict[str, Any]) -> None:
    log = paths.AppendOnlyFile(path)
    log.append(json.dumps(record))
    log.close()


def finished(records: Iterable[dict], row: Row, seed: int) -> dict | None:
    """The logged result of `row` at `seed` if that exact run finished."""
    for record in records:
        if record['name'] == row.name and record['seed'] == seed and record['key'] == row.key:
            return record
    return None


def summarize(records: Iterable[dict], rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Per row (in `rows` order, rows without runs left out): mean ± std of top-1 over seeds,
    every seed's value, and the means of the other numbers."""
    records = list(records)
    out = []
    for row in rows:
        runs = sorted(
            (r for r in records if r['name'] == row.name and r['key'] == row.key),
            key=lambda r: r['seed'],
        )
        if not runs:
            continue
        top1 = [100 * r['top1'] for r in runs]
        out.append(
            {
                'name': row.name,
                'description': row.description,
                'family': row.family,
                'seeds': [r['seed'] for r in runs],
                'top1': top1,
                'mean': statistics.mean(top1),
                'std': statistics.stdev(top1) if len(top1) > 1 else None,
                'mmacs': 1000 * runs[0]['gmacs'],
                'nonzero_params': runs[0]['nonzero_params'],
                'train_seconds': statistics.mean(r['train_seconds'] for r in runs),
                'epochs': runs[0]['epochs'],
            }
        )
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    """The study table: top-1 mean ± std and per seed, nonzero params, MMACs, training time."""
    lines = [
        '| run | test top-1 (%) | per seed | nonzero params | MMACs per image '
        '| train min (logged) |',
        '|---|---|---|---|---|---|',
    ]
    for s in summary:
        spread = '' if s['std'] is None else f' ± {s["std"]:.2f}'
        per_seed = ', '.join(f'{t:.2f} (s{seed})' for t, seed in zip(s['top1'], s['seeds']))
        lines.append(
            f'| {s["description"]} | {s["mean"]:.2f}{spread} | {per_seed} | '
            f'{s["nonzero_params"]:,} | {s["mmacs"]:.2f} | {s["train_seconds"] / 60:.1f} |'
        )
    return '\n'.join(lines) + '\n'
