"""An image folder as a TFDS dataset: TFDS's own folder builder, with two additions.

``root/<class>/*.jpg|png`` (one subfolder per class) is read as one split, ``train``; so is the
usual ``root/<split>/<class>/...`` layout of `tfds.folder_dataset.ImageFolder`, every split under
its folder's name. Splits can be sliced like any TFDS split (``train[:90%]``, ``train[90%:]``,
and `tfds.even_splits` for the processes of a multi-host run), which the TFDS builder refuses.
The examples of a split are in a fixed shuffled order (as TFDS's builder orders them), so a
slice holds every class. Labels are the sorted class folder names. The folder may be in a bucket
(gs://): it is listed and its files are read through the path layer (`paths.py`).
"""

from __future__ import annotations

import collections
import random

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import splits as tfds_splits

from sparse_vit_jax import paths

EXTENSIONS = ('.jpg', '.jpeg', '.png')  # what TFDS's folder builder reads
FLAT_SPLIT = 'train'  # the split of a folder of class folders


def _folders(path: str) -> list[str]:
    return sorted(child.name for child in paths.resolve(path).iterdir() if child.is_dir())


def _images(path: str) -> list[str]:
    files = [child for child in paths.resolve(path).iterdir() if child.suffix.lower() in EXTENSIONS]
    return [str(child) for child in sorted(files, key=lambda child: child.name)]


def _read_file(path: tf.Tensor) -> tf.Tensor:
    """The bytes of one image file: TensorFlow's own reader for local files (in the input
    pipeline's threads), the path layer for a bucket (TensorFlow's GCS client follows no
    emulator or gcsfs settings)."""

    def read(path):
        return paths.resolve(path.numpy().decode()).read_bytes()

    remote = tf.strings.regex_full_match(path, '[a-z][a-z0-9+.-]*://.*')
    return tf.cond(
        remote,
        lambda: tf.ensure_shape(tf.py_function(read, [path], tf.string), []),
        lambda: tf.io.read_file(path),
    )


def find_examples(root: str) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """{split: [(image path, class name)] in a fixed shuffled order} and the sorted classes.

    Raises ValueError (one line) for a folder that is missing, holds no class folders or images,
    or has fewer than two classes.
    """
    if not paths.resolve(root).is_dir():
        raise FileNotFoundError(f'image folder {root} does not exist')
    top = _folders(root)
    flat = [name for name in top if _images(paths.join(root, name))]
    layout = {FLAT_SPLIT: root} if flat else {name: paths.join(root, name) for name in top}
    examples, classes = collections.defaultdict(list), set()
    for split, folder in layout.items():
        for name in _folders(folder):
            classes.add(name)
            examples[split] += [(path, name) for path in _images(paths.join(folder, name))]
    how = 'put one subfolder per class in it (root/<class>/*.jpg), or root/<split>/<class>/*.jpg'
    if not any(examples.values()):
        raise ValueError(
            f'image folder {root} holds no .jpg/.jpeg/.png images in class folders; {how}'
        )
    if len(classes) < 2:
        found = f'only {sorted(classes)}' if classes else 'no class folders'
        raise ValueError(
            f'image folder {root} has {found}: a classifier needs two classes or more; {how}'
        )
    for split, items in examples.items():
        random.Random(split).shuffle(items)
    return dict(examples), sorted(classes)


class ImageFolder(tfds.folder_dataset.ImageFolder):
    """`tfds.folder_dataset.ImageFolder` for either layout, with sliceable splits."""

    def __init__(self, root_dir: str):
        self._image_shape, self._image_dtype = None, None
        root_dir = paths.join(root_dir)  # absolute; ~ expanded
        examples, classes = find_examples(root_dir)
        tfds.core.DatasetBuilder.__init__(self, data_dir=root_dir)
        self._data_dir = root_dir
        self._split_examples = examples
        self.info.features['label'].names = classes
        self.info.set_splits(
            tfds.core.SplitDict(
                [
                    tfds.core.SplitInfo(name=split, shard_lengths=[len(items)], num_bytes=0)
                    for split, items in examples.items()
                ]
            )
        )

    def _as_dataset(self, split, shuffle_files=False, decoders=None, read_config=None):
        del read_config
        if isinstance(split, str):
            split = tfds_splits.AbstractSplit.from_spec(split)
        chosen = []
        for part in split.to_absolute(dict(self.info.splits)):
            chosen += self._split_examples[str(part.splitname)][part.from_ : part.to]
        label = self.info.features['label']
        paths = [path for path, _ in chosen]
        labels = [label.str2int(name) for _, name in chosen]
        ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
        if shuffle_files:
            ds = ds.shuffle(len(chosen))

        def load(path, label):
            example = {'image': _read_file(path), 'label': label, 'image/filename': path}
            return self.info.features.decode_example(example, decoders=decoders)

        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
