"""Dataset loaders on real data (digits, Fashion-MNIST) and on small files written to tmp_path."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unlearning_core.data import (
    DATASET_NAMES,
    Dataset,
    SampleSet,
    default_data_dir,
    from_arrays,
    load_dataset,
)
from unlearning_core.data.manifest import stratified_split
from unlearning_core.errors import DatasetError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FASHION = SHARED_DATA / "fashion-mnist"


def _check_layout(ds: Dataset) -> None:
    """What every loader promises: normalised float32 N x C x H x W, int64 labels."""
    for part in (ds.train, ds.test):
        assert isinstance(part, SampleSet)
        assert part.images.dtype == torch.float32 and part.images.ndim == 4
        assert part.images.is_contiguous()
        assert part.labels.dtype == torch.int64
        assert float(part.images.min()) >= -1.0 and float(part.images.max()) <= 1.0
        assert int(part.labels.min()) >= 0 and int(part.labels.max()) < ds.num_classes
    assert len(ds.class_names) == ds.num_classes


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------- digits


def test_digits_shapes_ids_and_split() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    _check_layout(ds)
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.in_channels == 1 and ds.image_size == (8, 8)
    assert len(ds.train) + len(ds.test) == 1797
    assert len(ds.test) == pytest.approx(0.2 * 1797, abs=10)
    assert ds.train.sample_ids == tuple(str(i) for i in range(len(ds.train)))
    assert ds.test.sample_ids == tuple(f"test-{i}" for i in range(len(ds.test)))
    assert all(s is None for s in ds.train.subject_ids)

    # Training samples keep file order: they are the sorted train positions of the file.
    raw = load_digits()
    train_pos, test_pos = stratified_split(raw.target, 0.2, 0)
    expected = torch.from_numpy(((raw.images[train_pos] / 16.0 - 0.5) / 0.5).astype(np.float32))
    assert torch.allclose(ds.train.images[:, 0], expected)
    assert ds.train.labels.tolist() == raw.target[train_pos].tolist()
    assert float(ds.train.images.min()) == -1.0 and float(ds.train.images.max()) == 1.0

    # Stratified: every class is about 20 % test.
    train_counts, test_counts = Counter(ds.train.labels.tolist()), Counter(ds.test.labels.tolist())
    for c in range(10):
        share = test_counts[c] / (train_counts[c] + test_counts[c])
        assert abs(share - 0.2) < 0.02


def test_digits_split_is_deterministic_per_seed() -> None:
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.test.labels, b.test.labels)
    c = load_dataset("digits", seed=4)
    assert not torch.equal(a.train.images, c.train.images)
    half = load_dataset("digits", test_fraction=0.5)
    assert abs(len(half.test) - 1797 / 2) < 10


def test_digits_subject_size_names_consecutive_groups() -> None:
    ds = load_dataset("digits", subject_size=10)
    subjects = ds.train.subject_ids
    assert subjects[:10] == ("subject-0000",) * 10
    assert subjects[10] == "subject-0001"
    assert subjects[-1] == f"subject-{(len(ds.train) - 1) // 10:04d}"
    assert len(ds.train.positions_of_subject("subject-0002")) == 10
    assert all(s is None for s in ds.test.subject_ids)
    with pytest.raises(DatasetError):
        load_dataset("digits", subject_size=0)


def test_bad_test_fraction() -> None:
    with pytest.raises(DatasetError, match="test fraction"):
        load_dataset("digits", test_fraction=1.5)


# ---------------------------------------------------------------- Fashion-MNIST (real files)


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} is absent")
    return load_dataset("fashion-mnist", data_dir=SHARED_DATA)


def test_fashion_mnist_real_files(fashion: Dataset) -> None:
    ds = fashion
    _check_layout(ds)
    assert ds.name == "fashion-mnist"
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.in_channels == 1 and ds.image_size == (28, 28)
    assert ds.num_classes == 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert ds.train.sample_ids[0] == "0" and ds.train.sample_ids[-1] == "59999"
    assert ds.test.sample_ids[0] == "test-0" and ds.test.sample_ids[-1] == "test-9999"
    assert sorted(set(ds.train.labels.tolist())) == list(range(10))
    assert set(Counter(ds.train.labels.tolist()).values()) == {6000}
    assert set(Counter(ds.test.labels.tolist()).values()) == {1000}
    # The published first training label is 9 (ankle boot).
    assert int(ds.train.labels[0]) == 9


def test_default_data_dir_finds_shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    monkeypatch.delenv("LETHE_DATA_DIR", raising=False)
    monkeypatch.chdir(REPO_ROOT)
    assert default_data_dir() == SHARED_DATA.resolve()
    monkeypatch.chdir("/")  # not beside the checkout: falls back to the repo's sibling
    assert default_data_dir() == SHARED_DATA.resolve()


# ---------------------------------------------------------------- idx files


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_folder(
    folder: Path, *, gz: bool, n_train: int = 30, n_test: int = 9, classes: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic idx dataset with non-square 5x4 images, in Fashion-MNIST's file names."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(n_train, 5, 4), dtype=np.uint8)
    y_train = (np.arange(n_train) % classes).astype(np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 5, 4), dtype=np.uint8)
    y_test = (np.arange(n_test) % classes).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": _idx_bytes(x_train, 0x803),
        "train-labels-idx1-ubyte": _idx_bytes(y_train, 0x801),
        "t10k-images-idx3-ubyte": _idx_bytes(x_test, 0x803),
        "t10k-labels-idx1-ubyte": _idx_bytes(y_test, 0x801),
    }
    for stem, data in files.items():
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return x_train, y_train, x_test, y_test


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_idx_folder(tmp_path: Path, gz: bool) -> None:
    folder = tmp_path / "mine"
    x_train, y_train, x_test, y_test = _write_idx_folder(folder, gz=gz)
    ds = load_dataset(str(folder))
    _check_layout(ds)
    assert ds.name == str(folder.resolve())
    assert ds.train.images.shape == (30, 1, 5, 4) and ds.test.images.shape == (9, 1, 5, 4)
    assert ds.num_classes == 3 and ds.class_names == ("0", "1", "2")
    assert ds.train.sample_ids == tuple(str(i) for i in range(30))
    assert ds.test.sample_ids == tuple(f"test-{i}" for i in range(9))
    expected = torch.from_numpy((x_train / 255.0 - 0.5) / 0.5).float()
    assert torch.allclose(ds.train.images[:, 0], expected, atol=1e-6)
    assert ds.train.labels.tolist() == y_train.tolist()
    assert ds.test.labels.tolist() == y_test.tolist()


def test_idx_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_idx_folder(tmp_path / "fashion-mnist", gz=True, classes=10, n_train=20, n_test=10)
    monkeypatch.setenv("LETHE_DATA_DIR", str(tmp_path))
    ds = load_dataset("fashion-mnist", subject_size=5)
    assert len(ds.train) == 20 and ds.class_names[1] == "Trouser"
    assert ds.train.subject_ids[5] == "subject-0001"
    monkeypatch.setenv("LETHE_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("fashion-mnist")


def test_idx_truncated_file(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _write_idx_folder(folder, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(folder))
    msg = _one_line(exc)
    assert "train-images-idx3-ubyte" in msg and "truncated" in msg and "30 x 5 x 4" in msg


def test_idx_truncated_header(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _write_idx_folder(folder, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00"))
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(folder))
    msg = _one_line(exc)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "truncated" in msg


def test_idx_wrong_magic(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _write_idx_folder(folder, gz=True)
    labels = gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes())
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(folder))
    msg = _one_line(exc)
    assert "train-images-idx3-ubyte.gz" in msg and "wrong magic 0x00000801" in msg
    assert "0x00000803" in msg


def test_idx_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _write_idx_folder(folder, gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(8, np.uint8), 0x801))
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(folder))
    msg = _one_line(exc)
    assert "t10k-labels-idx1-ubyte" in msg and "8 labels" in msg and "9 images" in msg


def test_idx_bad_gzip_and_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _write_idx_folder(folder, gz=True)
    good = (folder / "train-labels-idx1-ubyte.gz").read_bytes()
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(folder))
    assert "train-labels-idx1-ubyte.gz" in _one_line(exc) and "bad gzip" in str(exc.value)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="bad gzip"):
        load_dataset(str(folder))
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(folder))
    assert "train-labels-idx1-ubyte" in _one_line(exc) and "not found" in str(exc.value)


# ---------------------------------------------------------------- image folders


def _png(path: Path, value: int, *, size: tuple[int, int] = (6, 6), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color=color).save(path)


def test_image_folder_split_layout(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    for c, cls in enumerate(["cat", "dog", "eel"]):
        for i in range(10):
            _png(root / cls / f"img{i:02d}.png", 255 if c == 0 else c * 40)
    _png(root / "dog" / "big.png", 80, size=(12, 9))  # resized to 6x6
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes

    ds = load_dataset(str(root), seed=1)
    _check_layout(ds)
    assert ds.name == str(root.resolve())
    assert ds.class_names == ("cat", "dog", "eel") and ds.num_classes == 3
    assert ds.in_channels == 1 and ds.image_size == (6, 6)
    all_ids = set(ds.train.sample_ids) | set(ds.test.sample_ids)
    expected_ids = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    assert all_ids == expected_ids and len(ds.train) + len(ds.test) == 31
    assert "dog/big.png" in all_ids
    assert list(ds.train.sample_ids) == sorted(ds.train.sample_ids)  # listing order kept
    cat = ds.train.positions_of_class(0)
    assert torch.all(ds.train.images[cat] == 1.0)  # white pixels -> 1
    assert Counter(ds.test.labels.tolist()) == {0: 2, 1: 2, 2: 2}

    again = load_dataset(str(root), seed=1)
    assert again.train.sample_ids == ds.train.sample_ids
    other = load_dataset(str(root), seed=2)
    assert other.train.sample_ids != ds.train.sample_ids


def test_image_folder_train_test_layout_rgb(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                _png(root / split / cls / f"{i}.png", 10 * i, size=(5, 7))
    _png(root / "train" / "b" / "rgb.png", 30, size=(5, 7), mode="RGB")  # -> all RGB
    ds = load_dataset(str(root))
    _check_layout(ds)
    assert ds.in_channels == 3 and ds.image_size == (7, 5)  # PIL size is (w, h)
    assert len(ds.train) == 9 and len(ds.test) == 4
    assert ds.train.sample_ids[0] == "train/a/0.png"
    assert set(ds.test.sample_ids) == {f"test/{c}/{i}.png" for c in "ab" for i in range(2)}
    assert ds.test.labels.tolist() == [0, 0, 1, 1]
    gray = ds.train.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_image_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(str(empty))
    (empty / "cls").mkdir()
    (empty / "cls" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(str(empty))
    broken = tmp_path / "broken"
    _png(broken / "a" / "ok.png", 1)
    (broken / "a" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(broken))
    assert "bad.png" in _one_line(exc)
    half = tmp_path / "half"
    _png(half / "train" / "a" / "0.png", 1)
    with pytest.raises(DatasetError, match="no test/"):
        load_dataset(str(half))


# ---------------------------------------------------------------- manifests and arrays


def _arrays(n: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 6, 6), dtype=np.uint8)
    labels = np.arange(n) % 4
    ids = np.asarray([f"rec-{i:03d}" for i in range(n)])
    return images, labels, ids


def test_npz_manifest_with_subjects(tmp_path: Path) -> None:
    images, labels, ids = _arrays()
    subjects = np.asarray(["alice" if i < 6 else ("" if i % 2 else "bob") for i in range(20)])
    path = tmp_path / "data.npz"
    np.savez(path, images=images, labels=labels, sample_ids=ids, subject_ids=subjects)
    ds = load_dataset(str(path), test_fraction=0.25)
    _check_layout(ds)
    assert ds.name == str(path.resolve())
    assert len(ds.train) == 16 and len(ds.test) == 4 and ds.num_classes == 4
    assert set(ds.train.sample_ids) | set(ds.test.sample_ids) == set(ids.tolist())
    assert list(ds.train.sample_ids) == sorted(ds.train.sample_ids)
    expected = {sid: (s or None) for sid, s in zip(ids.tolist(), subjects.tolist(), strict=True)}
    for part in (ds.train, ds.test):
        assert part.subject_ids == tuple(expected[sid] for sid in part.sample_ids)
    assert None in ds.train.subject_ids and "alice" in ds.train.subject_ids  # "" means none
    # subject_size replaces the manifest's subjects
    grouped = load_dataset(str(path), test_fraction=0.25, subject_size=4)
    assert grouped.train.subject_ids[:5] == ("subject-0000",) * 4 + ("subject-0001",)


def test_npz_manifest_with_test_arrays_and_channels(tmp_path: Path) -> None:
    images, labels, ids = _arrays()
    rgb = np.repeat(images[:, None], 3, axis=1).astype(np.float32) / 255.0  # N x C x H x W float
    path = tmp_path / "rgb.npz"
    np.savez(
        path,
        images=rgb,
        labels=labels,
        sample_ids=ids,
        test_images=rgb[:5],
        test_labels=labels[:5],
    )
    ds = load_dataset(str(path))
    assert ds.train.images.shape == (20, 3, 6, 6) and ds.test.images.shape == (5, 3, 6, 6)
    assert ds.train.sample_ids == tuple(ids.tolist())
    assert ds.test.sample_ids == tuple(f"test-{i}" for i in range(5))
    assert all(s is None for s in ds.train.subject_ids)


def test_npz_manifest_errors(tmp_path: Path) -> None:
    images, labels, ids = _arrays()
    objects = tmp_path / "objects.npz"
    np.savez(objects, images=images, labels=labels, sample_ids=np.asarray(list(ids), dtype=object))
    with pytest.raises(DatasetError) as exc:
        load_dataset(str(objects))
    assert "objects.npz" in _one_line(exc) and "sample_ids" in str(exc.value)
    missing = tmp_path / "missing.npz"
    np.savez(missing, images=images, labels=labels)
    with pytest.raises(DatasetError, match="lacks sample_ids"):
        load_dataset(str(missing))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="bad.npz"):
        load_dataset(str(bad))
    dup = tmp_path / "dup.npz"
    np.savez(dup, images=images, labels=labels, sample_ids=np.asarray(["same"] * 20))
    with pytest.raises(DatasetError, match="dup.npz.*unique"):
        load_dataset(str(dup))


def test_from_arrays_roundtrip() -> None:
    images, labels, ids = _arrays()
    ds = from_arrays(
        images,
        labels,
        list(ids),
        subject_ids=["s1"] * 10 + [None] * 10,
        test_images=images[:4],
        test_labels=labels[:4],
        name="mine",
        num_classes=6,
    )
    _check_layout(ds)
    assert ds.name == "mine" and ds.num_classes == 6 and len(ds.class_names) == 6
    assert ds.train.subject_ids[0] == "s1" and ds.train.subject_ids[-1] is None
    assert torch.allclose(
        ds.train.images[:, 0], torch.from_numpy(images / 127.5 - 1.0).float(), atol=1e-6
    )
    split = from_arrays(images, labels, ids, seed=5)
    assert len(split.train) + len(split.test) == 20 and len(split.test) >= 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": np.r_[-1, np.arange(19) % 4]}, ">= 0"),
        ({"num_classes": 3}, "labels must be in 0..2"),
        ({"sample_ids": ["a", "b"] + [f"x{i}" for i in range(17)] + ["a"]}, "unique.*'a'"),
        ({"sample_ids": [str(i) for i in range(19)]}, "19 entries"),
        ({"labels": np.arange(19) % 4}, "1-D array of 20"),
        ({"labels": np.arange(20) / 2}, "integers"),
        ({"images": np.full((20, 6, 6), 2.0, np.float32)}, r"\[0, 1\]"),
        ({"images": np.zeros((20, 6, 6, 3), np.uint8)}, "channels-last"),
        ({"images": np.zeros((20, 36), np.uint8)}, "N x H x W"),
        (
            {"test_images": np.zeros((3, 5, 5), np.uint8), "test_labels": np.zeros(3, int)},
            "test_images",
        ),
        ({"test_images": np.zeros((3, 6, 6), np.uint8)}, "together"),
        ({"subject_ids": [1] * 20}, "subject_ids must be strings"),
    ],
)
def test_from_arrays_validation(change: dict, message: str) -> None:
    images, labels, ids = _arrays()
    kwargs = {"images": images, "labels": labels, "sample_ids": ids} | change
    with pytest.raises(DatasetError, match=message):
        from_arrays(**kwargs)


# ---------------------------------------------------------------- names


def test_unknown_dataset_names_builtins(tmp_path: Path) -> None:
    assert DATASET_NAMES == ("digits", "fashion-mnist")
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar-11")
    msg = _one_line(exc)
    assert "cifar-11" in msg and "digits" in msg and "fashion-mnist" in msg
    with pytest.raises(DatasetError, match="nowhere"):
        load_dataset(str(tmp_path / "nowhere"))
    text = tmp_path / "data.csv"
    text.write_text("1,2,3")
    with pytest.raises(DatasetError, match="not a dataset"):
        load_dataset(str(text))
