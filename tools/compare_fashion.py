"""The Fashion-MNIST study (docs/results.md): trains what is missing, evaluates, counts MACs, and
writes the table over seeds, a results JSON and the accuracy-vs-MACs figure.

  python tools/compare_fashion.py --runs runs/study --jobs 2 --nice 10 \\
      --markdown runs/study/table.md --figure runs/study/figures
  python tools/compare_fashion.py --runs runs/study --rows dense,svite_0.5_ref --seeds 1
  python tools/compare_fashion.py --runs runs/study --report --markdown table.md  # no training

Each (row, seed) is `tools/train.py --config configs/fashion_mnist.py:<row args>,seed=S` in
RUNS/<row>_s<S>, then `tools/evaluate.py`. Every finished run is appended to RUNS/log.jsonl
(config, seed, accuracy, seconds, load); runs in the log are skipped, an interrupted one resumes
from its checkpoint. Rows: `sparse_vit_jax.study` (STUDY, then the ABLATIONS with --rows).
"""

import concurrent.futures
import datetime
import json
import os
import subprocess
import sys
import time

import ml_collections
from absl import flags

from sparse_vit_jax import cli, flops, paths, plots, study
from sparse_vit_jax.train.metrics import read_metrics
from sparse_vit_jax.train.restore import saved_config
from sparse_vit_jax.visualize import save as save_figure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUNS = flags.DEFINE_string('runs', 'runs/study', 'Where the run workdirs and the log go.')
_ROWS = flags.DEFINE_list('rows', [], 'Rows to run (default: the study; see --list).')
_SEEDS = flags.DEFINE_list('seeds', [], 'Seeds to run (default: each row its own count).')
_JOBS = flags.DEFINE_integer('jobs', 1, 'Trainings at the same time.')
_NICE = flags.DEFINE_integer('nice', 10, 'Niceness of the trainings (accuracy does not depend).')
_LIST = flags.DEFINE_bool('list', False, 'List the rows and exit.')
_REPORT = flags.DEFINE_bool(
    'report', False, 'Train nothing: the table and figure of the runs already in the log.'
)
_MARKDOWN = flags.DEFINE_string('markdown', None, 'Write the table (markdown) to this file.')
_FIGURE = flags.DEFINE_string('figure', None, 'Write the accuracy-vs-MACs figure to this folder.')


def _git_commit() -> str:
    result = subprocess.run(
        ['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True
    )
    return result.stdout.strip() or 'unknown'


def _python(*args: str) -> list[str]:
    return ['nice', '-n', str(_NICE.value), sys.executable, *args]


def train_seconds(workdir: str, batch: int) -> float:
    """Training time as the run logged it (steps × batch / logged img/s, summed over its log
    intervals), which leaves out start-up, compilation stalls between runs and evaluation."""
    records = read_metrics(workdir, 'train')
    steps = [r['step'] - p['step'] for p, r in zip([{'step': 0}] + records, records)]
    return sum(n * batch / r['images_per_sec'] for n, r in zip(steps, records))


def run_one(row: study.Row, seed: int) -> dict:
    """Trains (or resumes) and evaluates one run; returns its log record."""
    workdir = paths.join(_RUNS.value, f'{row.name}_s{seed}')
    load, commit = os.getloadavg()[0], _git_commit()
    start = time.time()
    command = _python('tools/train.py', '--config', row.config_arg(seed), *row.flags())
    command += ['--workdir', workdir]
    log = paths.AppendOnlyFile(paths.join(_RUNS.value, f'{row.name}_s{seed}.log'))
    try:
        with open(log.local_path, 'a') as output:
            subprocess.run(command, cwd=REPO, check=True, stdout=output, stderr=output)
    finally:
        log.close()  # in a bucket: uploaded whole
    wall = time.time() - start
    evaluated = subprocess.run(
        _python('tools/evaluate.py', '--workdir', workdir, '--json'),
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    quality = None
    if row.family == 'tokens':  # how much the learned selection matters (README, suspected 6)
        selection = subprocess.run(
            _python('tools/evaluate.py', '--workdir', workdir, '--token_selection', '--json'),
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        quality = json.loads(selection.stdout.strip().splitlines()[-1])
    config = ml_collections.ConfigDict(saved_config(workdir))
    macs = flops.report_from_config(config, xla=False)
    return {
        'name': row.name,
        'key': row.key,
        'seed': seed,
        'family': row.family,
        'method': config.sparsity.method,
        'fidelity': config.sparsity.fidelity,
        'epochs': config.num_epochs,
        'top1': report['top1'],
        'top5': report['top5'],
        'loss': report['loss'],
        'nonzero_params': report['nonzero_params'],
        'num_params': report['num_params'],
        'gmacs': macs['gmacs'],
        'dense_gmacs': macs['dense_gmacs'],
        'train_seconds': train_seconds(workdir, config.batch_size),
        'token_selection': quality,
        'wall_seconds': wall,
        'load_start': load,
        'load_end': os.getloadavg()[0],
        'commit': commit,
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'workdir': workdir,
    }


def main(argv):
    del argv
    if _LIST.value:
        for row in study.ROWS.values():
            print(f'{row.name:24s} {row.seeds} seeds  {row.key}')
        return
    names = _ROWS.value or [row.name for row in study.STUDY]
    unknown = sorted(set(names) - set(study.ROWS))
    if unknown:
        raise ValueError(f'unknown rows {unknown}; --list shows them')
    rows = [study.ROWS[name] for name in names]
    log_path = paths.join(_RUNS.value, 'log.jsonl')
    done = study.read_log(log_path)
    seeds = [int(s) for s in _SEEDS.value] or range(max(row.seeds for row in rows))
    if _REPORT.value:
        seeds = []
    todo = []  # seed by seed, so that an interrupted study has every row at the same seeds
    for seed in seeds:
        todo += [
            (row, seed)
            for row in rows
            if (_SEEDS.value or seed < row.seeds) and study.finished(done, row, seed) is None
        ]
    print(f'[study] {len(todo)} runs to do, {_JOBS.value} at a time', flush=True)
    with concurrent.futures.ThreadPoolExecutor(_JOBS.value) as pool:
        futures = {pool.submit(run_one, row, seed): (row, seed) for row, seed in todo}
        for future in concurrent.futures.as_completed(futures):
            row, seed = futures[future]
            try:
                record = future.result()
            except subprocess.CalledProcessError as error:
                print(f'[study] {row.name} seed {seed} failed ({error}); see its .log', flush=True)
                continue
            study.append_log(log_path, record)
            print(
                f"[study] {row.name} seed {seed}: top-1 {100 * record['top1']:.2f}, "
                f"{record['train_seconds'] / 60:.1f} min logged",
                flush=True,
            )
    summary = study.summarize(study.read_log(log_path), rows)
    paths.write_atomic(paths.join(_RUNS.value, 'summary.json'), json.dumps(summary, indent=1))
    table = study.markdown(summary)
    print(table)
    if _MARKDOWN.value:
        paths.write_atomic(_MARKDOWN.value, table)
    if _FIGURE.value:
        figure = plots.study_figure(summary, title='Fashion-MNIST: test top-1 vs MACs per image')
        path = save_figure(figure, _FIGURE.value, 'accuracy_vs_macs.png', dpi=150)
        print(f'[study] figure: {path}')


if __name__ == '__main__':
    cli.run(main)
