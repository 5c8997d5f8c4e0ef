"""A folder of class subfolders of images (torchvision ``ImageFolder`` layout).

``root/<class>/<file>`` is split seeded and stratified; ``root/train/<class>/...`` plus
``root/test/<class>/...`` is used as given. A sample's id is its file path relative to
``root`` (posix), so it survives re-listing and names the file an erasure must delete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import Any
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unlearning_core.data.manifest import build_dataset
from unlearning_core.data.sampleset import Dataset
from unlearning_core.errors import DatasetError

#: PIL modes kept as one grayscale channel; anything else becomes RGB.
_GRAYSCALE_MODES = frozenset({"L", "1"})


#: How many folder entries a listing may visit before it is refused: a source that is not an
#: image folder at all (``/``, ``/proc/self``) must end in a clear error, not walk the disk.
MAX_ENTRIES = 2_000_000


@cache
def _folder_class() -> type:
    """The ImageFolder subclass, built on first use: importing torchvision costs over a
    second, which digits, ``.npz`` and idx datasets never need."""
    from torchvision.datasets import ImageFolder

    class VisibleImageFolder(ImageFolder):
        """ImageFolder that ignores hidden folders (``.ipynb_checkpoints``, ``.git``) as classes,
        follows no symbolic link to a folder (torchvision's walk does, and loops on a link to a
        parent) and visits at most :data:`MAX_ENTRIES` entries."""

        @staticmethod
        def make_dataset(
            directory: str | Path,
            class_to_idx: dict[str, int],
            extensions: tuple[str, ...] | None = None,
            is_valid_file: Callable[[str], bool] | None = None,
            allow_empty: bool = False,
        ) -> list[tuple[str, int]]:
            if is_valid_file is None:
                exts = tuple(e.lower() for e in (extensions or ()))
                is_valid_file = lambda path: path.lower().endswith(exts)  # noqa: E731
            instances: list[tuple[str, int]] = []
            seen = 0
            for target_class in sorted(class_to_idx):
                walked: list[tuple[str, list[str]]] = []
                for root, dirs, files in os.walk(os.path.join(directory, target_class)):
                    seen += len(dirs) + len(files)
                    if seen > MAX_ENTRIES:
                        raise DatasetError(
                            f"{directory}: more than {MAX_ENTRIES:,} entries under the class folders; "
                            "not an image folder"
                        )
                    walked.append((root, files))
                for root, files in sorted(walked):  # torchvision's order: by folder path, then name
                    paths = (os.path.join(root, f) for f in sorted(files))
                    instances.extend((p, class_to_idx[target_class]) for p in paths if is_valid_file(p))
            found = {t for _, t in instances}
            empty = sorted(c for c, i in class_to_idx.items() if i not in found)
            if empty and not allow_empty:
                raise FileNotFoundError(f"no images in the class folders {', '.join(empty)}")
            return instances

        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            classes = sorted(
                e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")
            )
            if not classes:
                raise FileNotFoundError(f"no class folders in {directory}")
            return classes, {c: i for i, c in enumerate(classes)}

    return VisibleImageFolder


def _list(root: Path, *, allow_empty: bool) -> Any:
    try:
        return _folder_class()(str(root), allow_empty=allow_empty)
    except FileNotFoundError as exc:
        raise DatasetError(f"{root}: no images found ({exc})") from None


def _peek(path: str) -> tuple[str, tuple[int, int]]:
    """Mode and size from the header only (no decoding), to pick channels before loading."""
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from None


def _load(path: str, mode: str, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if im.size != size:
                im = im.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from None
    return arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(
    root: Path, *, seed: int = 0, test_fraction: float = 0.2, name: str | None = None
) -> Dataset:
    """Load every image into memory: 1 channel if all are grayscale, else RGB; all resized
    to the first training image's size so they stack into one tensor."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        raise DatasetError(
            f"{root}: has {'train/' if has_train else 'test/'} but no "
            f"{'test/' if has_train else 'train/'}; give both or only class folders"
        )
    train_folder = _list(root / "train" if has_train else root, allow_empty=False)
    classes = list(train_folder.classes)
    train_samples = [(p, int(t)) for p, t in train_folder.samples]
    test_samples: list[tuple[str, int]] = []
    if has_test:
        test_folder = _list(root / "test", allow_empty=True)
        for p, t in test_folder.samples:
            cls = test_folder.classes[t]
            if cls not in train_folder.class_to_idx:
                raise DatasetError(f"{root / 'test' / cls}: class {cls!r} is not in train/")
            test_samples.append((p, train_folder.class_to_idx[cls]))
        if not test_samples:
            raise DatasetError(f"{root / 'test'}: no images found")

    everything = train_samples + test_samples
    peeks = [_peek(p) for p, _ in everything]
    mode = "L" if all(m in _GRAYSCALE_MODES for m, _ in peeks) else "RGB"
    size = peeks[0][1]

    def stack(samples: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        images = np.stack([_load(p, mode, size) for p, _ in samples])
        labels = np.asarray([t for _, t in samples], dtype=np.int64)
        ids = [Path(p).relative_to(root).as_posix() for p, _ in samples]
        return images, labels, ids

    x, y, ids = stack(train_samples)
    kwargs: dict = {}
    if has_test:
        tx, ty, tids = stack(test_samples)
        kwargs = {"test_images": tx, "test_labels": ty, "test_sample_ids": tids}
    return build_dataset(
        x,
        y,
        ids,
        name=name if name is not None else str(root),
        seed=seed,
        test_fraction=test_fraction,
        num_classes=len(classes),
        class_names=classes,
        **kwargs,
    )
