"""Your own data end to end: train on an image folder of JPEG and PNG files, then classify image
files with tools/predict.py from the run and from its StableHLO export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FOLDER_CLASSES
from sparse_vit_jax import portable
from sparse_vit_jax import predict as predict_lib
from sparse_vit_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _predict_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    command = [sys.executable, os.path.join(ROOT, 'tools', 'predict.py'), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope='module')
def folder_run(tmp_path_factory, image_folder, tiny_data_dir):
    """A few DeiT-recipe steps of vit_test on the folder's first 70%, evaluated on the rest."""
    from conftest import _tiny_config

    config = _tiny_config(
        tiny_data_dir,
        **{
            'data.name': 'folder',
            'data.data_dir': image_folder,
            'data.recipe': 'deit',
            'data.cache': False,
            'data.augment.randaugment': '',
            'data.train_split': 'train[:70%]',
            'data.eval_split': 'train[70%:]',
            'model.num_classes': 3,
        },
    )
    run = str(tmp_path_factory.mktemp('folder_run'))
    results = loop.train_and_evaluate(config, run)
    # 14 of the 20 files train (3 steps of 4), the other 6 evaluate, less the broken ones.
    assert results['step'] == 3 and 4 <= results['num_examples'] <= 6
    return run


def test_predict_tool_names_the_classes_of_the_folder(folder_run, image_folder):
    images = [
        os.path.join(image_folder, 'dog', '1.jpg'),
        os.path.join(image_folder, 'fox', '2.png'),
    ]
    result = _predict_tool('--workdir', folder_run, '--json', *images)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line['image'] for line in lines] == images
    predictor = predict_lib.from_workdir(folder_run)
    assert predictor.label_names == list(FOLDER_CLASSES)
    for line, path in zip(lines, images):
        assert sorted(entry['label'] for entry in line['top']) == sorted(FOLDER_CLASSES)
        logits = predictor.forward(predict_lib.model_input(predictor, path)[0][None])[0]
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        for entry in line['top']:
            assert entry['label'] == FOLDER_CLASSES[entry['class']]
            assert entry['probability'] == pytest.approx(expected[entry['class']], rel=1e-5)

    bad = _predict_tool(
        '--workdir', folder_run, images[0], os.path.join(image_folder, 'dog', 'notes.jpg')
    )
    assert bad.returncode == 1 and bad.stdout == ''
    assert bad.stderr.strip().splitlines()[-1].startswith('error: ')
    assert 'notes.jpg is not an image' in bad.stderr.strip().splitlines()[-1]


def test_an_exported_model_predicts_what_the_run_does(folder_run, image_folder, tmp_path):
    out = str(tmp_path / 'hlo')
    portable.export_stablehlo(folder_run, out, platforms=('cpu',))
    images = [os.path.join(image_folder, name, '3.jpg') for name in FOLDER_CLASSES]
    from_run = predict_lib.predict(predict_lib.from_workdir(folder_run), images, top=2)
    exported = predict_lib.predict(predict_lib.from_export(out), images, top=2)
    assert len(from_run[0]['top']) == 2
    for a, b in zip(from_run, exported):
        assert [e['label'] for e in a['top']] == [e['label'] for e in b['top']]
        for x, y in zip(a['top'], b['top']):
            assert x['probability'] == pytest.approx(y['probability'], rel=1e-5)


def test_small_image_models_resize_other_sizes(tiny_config, tmp_path):
    """The small-image recipe's data already has the model's size; other images are resized."""
    import tensorflow as tf

    config = tiny_config()
    predictor = predict_lib.Predictor(lambda images: images.mean((1, 2)), config, None)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    (tmp_path / 'same.png').write_bytes(tf.io.encode_png(image).numpy())
    got, resized = predict_lib.model_input(predictor, str(tmp_path / 'same.png'))
    # Normalized as the eval step normalizes the pipeline's uint8 images.
    expected = (image.astype(np.float32) / 255 - 0.3) / 0.3
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert resized is None
    (tmp_path / 'big.jpg').write_bytes(tf.io.encode_jpeg(np.tile(image, (2, 3, 1))).numpy())
    got, resized = predict_lib.model_input(predictor, str(tmp_path / 'big.jpg'))
    assert got.shape == (16, 16, 3) and resized == [32, 48]
    (tmp_path / 'text.png').write_text('hello')
    with pytest.raises(ValueError, match='text.png is not an image'):
        predict_lib.predict(predictor, [str(tmp_path / 'text.png')])
