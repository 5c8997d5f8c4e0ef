"""The scikit-learn digits: 1,797 real 8x8 images that ship with scikit-learn (fast tests)."""

from __future__ import annotations

import numpy as np

from unlearning_core.data.manifest import build_dataset, stratified_split
from unlearning_core.data.sampleset import Dataset

#: Value of a white pixel in ``load_digits`` (pixels are 0..16 counts of a 4x4 block).
DIGITS_MAX_PIXEL = 16.0


def load_digits_dataset(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Digits with a seeded stratified split; train ids ``"0"``.. and test ids ``"test-0"``..

    Ids are positions within each part in file order, so they are stable for a given
    ``(seed, test_fraction)``, which is what a training run records.
    """
    from sklearn.datasets import load_digits  # local: sklearn is slow to import

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # 1797 x 8 x 8, 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_pos, test_pos = stratified_split(labels, test_fraction, seed)
    return build_dataset(
        images[train_pos],
        labels[train_pos],
        [str(i) for i in range(len(train_pos))],
        test_images=images[test_pos],
        test_labels=labels[test_pos],
        name="digits",
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        image_scale=DIGITS_MAX_PIXEL,
    )
