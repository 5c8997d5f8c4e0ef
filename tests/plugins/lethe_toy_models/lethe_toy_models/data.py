"""A user's own dataset loader: string ids of its own, an explicit evaluation split."""

from __future__ import annotations

import numpy as np

from unlearning_core.data import Dataset, from_arrays


def load(*, seed: int = 0) -> Dataset:
    """120 training and 40 evaluation 8x8 images of 3 classes (class = brightness band)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(120) % 3
    images = (rng.random((120, 8, 8)) * 60 + labels[:, None, None] * 90).astype(np.uint8)
    test_labels = np.arange(40) % 3
    test_images = (rng.random((40, 8, 8)) * 60 + test_labels[:, None, None] * 90).astype(np.uint8)
    return from_arrays(
        images, labels, [f"claim-{i:05d}" for i in range(120)],
        test_images=test_images, test_labels=test_labels, name="toy-claims", num_classes=3,
    )
