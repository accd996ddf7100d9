"""README "Smoke-test the ImageNet path" runs as written: the block is read from the README and
run by bash with its paths moved to a temporary folder and, to keep the suite fast, two overrides
added that shrink the work without changing the commands. Its output is checked for what the
section promises, and for the harmless warnings the tools silence."""

import os
import re
import subprocess
import sys

import tensorflow_datasets as tfds

from sparse_vit_jax.layer_order import layer_sort_key
from sparse_vit_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = '<!-- smoke-test: tests/train/test_smoke_readme.py runs this block -->'


def readme_block() -> str:
    with open(os.path.join(REPO, 'README.md')) as f:
        after = f.read().split(MARKER, 1)[1]
    return after.split('```bash\n', 1)[1].split('```', 1)[0]


def test_readme_smoke_test_runs_as_written(tmp_path):
    block = readme_block()
    assert block.count('SHORT="') == 1
    # Cheaper than written, same commands: one block instead of 12 and no RandAugment (compiling
    # the model and tracing RandAugment's graph take most of each run; both are covered at 224
    # by tests/train/test_imagenet_pipeline.py).
    block = block.replace('runs/smoke', str(tmp_path)).replace(
        'SHORT="', 'SHORT="--config.model.depth=1 --config.data.augment.randaugment= '
    )
    assert 'runs/' not in block  # nothing lands in the repository
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')  # the tools set them
    }
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
    result = subprocess.run(
        ['bash', '-e', '-c', block],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for harmless in ('oneDNN', 'Variant folder', 'split not found', 'Traceback'):
        assert harmless not in output, harmless

    # The fake's validation images are labelled with its own classes (TFDS labels them by
    # position; the fake took its classes from the first validation images).
    builder = tfds.builder('imagenet2012', data_dir=str(tmp_path / 'tfds'))
    labels = {
        split: {int(e['label']) for e in builder.as_dataset(split=split).as_numpy_iterator()}
        for split in ('train', 'validation')
    }
    assert labels['validation'] == labels['train'] and len(labels['train']) == 3

    # Each method trained 2 steps, timed the second, updated the topology at step 1 and
    # evaluated the 3 validation images (one batch: no padding to a larger eval batch).
    for method in ('svite', 's2vite', 'sviteplus'):
        records = read_metrics(str(tmp_path / method))
        train = [r for r in records if r['kind'] == 'train']
        assert [r['step'] for r in train] == [1, 2], method
        assert 'images_per_sec' not in train[0] and train[1]['images_per_sec'] > 0, method
        updates = [r for r in records if r['kind'] == 'sparsity' and r['last_update_step'] == 1]
        assert updates and updates[0]['moved'] > 0, method
        (evaluation,) = [r for r in records if r['kind'] == 'eval']
        assert evaluation['num_examples'] == 3, method
    # Per-layer values in model order (patch embedding, qkv before proj, head last), in the
    # metrics and in what evaluate prints.
    (update,) = [r for r in read_metrics(str(tmp_path / 'svite'), 'sparsity')][-1:]
    layers = list(update['layer_density'])
    assert layers == sorted(layers, key=layer_sort_key) != sorted(layers)
    assert layers[0].startswith('patch_embed') and layers[-1].startswith('head')
    printed = re.findall(r'^\s{4}(\S+)\s+[\d.]+$', result.stdout, flags=re.M)
    assert printed[: len(layers)] == layers
    # The slim export kept 2 of 3 heads (head_density 0.7) in its one block.
    assert re.search(r'heads per block:\s+\[2\]', result.stdout)
    assert (tmp_path / 's2vite_slim' / 'checkpoints').is_dir()
