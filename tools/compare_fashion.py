"""Every method on Fashion-MNIST at the same seed and budget: trains what is missing, evaluates,
counts FLOPs, and writes the results table (markdown) and a JSON list for the plots.

  python tools/compare_fashion.py --runs runs/compare --seeds 0,1 --markdown docs/results.md
  python tools/visualize.py accuracy --results runs/compare/results.json --out docs/figures

Runs are `tools/train.py --config configs/fashion_mnist.py:<args>,seed=S` in RUNS/<name>_s<S>;
finished runs are reused, interrupted ones resume.
"""

import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402

from sparse_vit_jax import cli, flops  # noqa: E402
from sparse_vit_jax.train import evaluation  # noqa: E402
from sparse_vit_jax.train.metrics import read_metrics  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (configs/fashion_mnist.py args, what it is)
METHODS = {
    'dense': ('method=dense', 'dense ViT'),
    'svite_0.5': ('method=svite,density=0.5', 'SViTE, density 0.5'),
    'svite_0.3': ('method=svite,density=0.3', 'SViTE, density 0.3'),
    's2vite_0.7_0.7': (
        'method=s2vite,head_density=0.7,neuron_density=0.7',
        'S²ViTE, heads 0.7 / neurons 0.7',
    ),
    'tokens_15': ('method=sviteplus,density=1.0,keep_tokens=15', 'tokens only, 15 of 17 kept'),
    'sviteplus_0.5_15': (
        'method=sviteplus,density=0.5,keep_tokens=15',
        'SViTE+: density 0.5, 15 of 17 tokens',
    ),
    's2viteplus_0.7_0.7_15': (
        'method=s2viteplus,head_density=0.7,neuron_density=0.7,keep_tokens=15',
        'S²ViTE+: heads/neurons 0.7, 15 of 17 tokens',
    ),
}

_RUNS = flags.DEFINE_string('runs', 'runs/compare', 'Where the run workdirs go.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds to run every method with.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these methods (default: all).')
_MARKDOWN = flags.DEFINE_string('markdown', None, 'Write the results table to this file.')
_FIDELITY = flags.DEFINE_enum('fidelity', 'reference', ['reference', 'improved'], 'Fidelity.')


def config_arg(name: str, seed: str) -> str:
    return f'configs/fashion_mnist.py:{METHODS[name][0]},fidelity={_FIDELITY.value},seed={seed}'


def train(name: str, seed: str, workdir: str) -> None:
    command = [sys.executable, 'tools/train.py', '--config', config_arg(name, seed)]
    print(f'[compare] training {name} seed {seed} -> {workdir}', flush=True)
    subprocess.run([*command, '--workdir', workdir], cwd=REPO, check=True)


def result(name: str, seed: str, workdir: str) -> dict:
    report = evaluation.evaluate_checkpoint(workdir)
    config = evaluation.restore_model(workdir).config
    macs = flops.report_from_config(config, xla=False)
    records = read_metrics(workdir, 'train')
    steps = [r['step'] - p['step'] for p, r in zip([{'step': 0}] + records, records)]
    seconds = sum(n * config.batch_size / r['images_per_sec'] for n, r in zip(steps, records))
    return {
        'name': name,
        'seed': int(seed),
        'method': config.sparsity.method,
        'description': METHODS[name][1],
        'top1': report['top1'],
        'top5': report['top5'],
        'loss': report['loss'],
        'density': report.get('density', 1.0),
        'nonzero_params': report['nonzero_params'],
        'num_params': report['num_params'],
        'gmacs': macs['gmacs'],
        'dense_gmacs': macs['dense_gmacs'],
        'saving': macs['saving'],
        'train_seconds': seconds,
        'step': report['step'],
    }


def markdown(results: list[dict], seeds: list[str]) -> str:
    rows = []
    for name in METHODS:
        runs = [r for r in results if r['name'] == name]
        if not runs:
            continue
        top1 = [100 * r['top1'] for r in runs]
        spread = f' ± {statistics.stdev(top1):.2f}' if len(top1) > 1 else ''
        per_seed = ', '.join(f"{t:.2f} (s{r['seed']})" for t, r in zip(top1, runs))
        first = runs[0]
        rows.append(
            f"| {first['description']} | {statistics.mean(top1):.2f}{spread} | {per_seed} | "
            f"{first['nonzero_params']:,} / {first['num_params']:,} | "
            f"{1000 * first['gmacs']:.2f} | {first['saving']:.1%} |"
        )
    header = (
        f'Seeds: {", ".join(seeds)} (top-1: the mean over the seeds run, ± their std).\n\n'
        '| run | test top-1 (%) | per seed | nonzero / all params | MMACs per image | FLOPs saving |\n'
        '|---|---|---|---|---|---|\n'
    )
    return header + '\n'.join(rows) + '\n'


def main(argv):
    del argv
    names = _ONLY.value or list(METHODS)
    unknown = set(names) - set(METHODS)
    if unknown:
        raise ValueError(f'unknown methods {sorted(unknown)}; choose from {list(METHODS)}')
    results = []
    for seed in _SEEDS.value:
        for name in names:
            workdir = os.path.join(_RUNS.value, f'{name}_s{seed}')
            train(name, seed, workdir)  # a finished run only re-evaluates
            results.append(result(name, seed, workdir))
            print(f"[compare] {name} seed {seed}: top-1 {results[-1]['top1']:.4f}", flush=True)
    os.makedirs(_RUNS.value, exist_ok=True)
    with open(os.path.join(_RUNS.value, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    table = markdown(results, _SEEDS.value)
    print(table)
    if _MARKDOWN.value:
        with open(_MARKDOWN.value, 'w') as f:
            f.write(table)


if __name__ == '__main__':
    cli.run(main)
