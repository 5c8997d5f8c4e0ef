"""Blob store contract, run against both back ends (local directory and S3 via moto).

The S3 half needs the server from scripts/ensure-services.sh (`make test` starts it); the
`s3_settings` fixture fails loudly when it is not there.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from unlearning_core.errors import BlobIntegrityError, BlobNotFoundError, BlobStoreError
from unlearning_core.store import (
    BlobRef,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    S3Settings,
    open_store,
)
from unlearning_core.store import local as local_module


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest) -> BlobStore:
    """Each contract test runs once per back end."""
    return request.getfixturevalue(f"{request.param}_store")


def tamper(store: BlobStore, key: str, data: bytes, *, recorded: str | None) -> None:
    """Replace a blob's bytes behind the store's back, keeping ``recorded`` as its hash.

    ``recorded=None`` drops the recorded hash altogether.
    """
    if isinstance(store, LocalBlobStore):
        path = store.root / key
        path.write_bytes(data)
        sidecar = path.with_name(path.name + ".sha256")
        if recorded is None:
            sidecar.unlink()
        else:
            sidecar.write_text(f"{recorded}  {path.name}\n")
    else:
        assert isinstance(store, S3BlobStore)
        metadata = {"x-amz-meta-sha256": recorded} if recorded is not None else None
        store.client.put_object(
            store.bucket, store.object_name(key), io.BytesIO(data), len(data), metadata=metadata
        )


# ---------------------------------------------------------------------------------------
# Contract, both back ends
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"hello", bytes(range(256)) * 3], ids=["empty", "small", "binary"]
)
def test_bytes_round_trip(store: BlobStore, data: bytes) -> None:
    ref = store.put("runs/1/weights.safetensors", data)
    assert ref == BlobRef(key="runs/1/weights.safetensors", sha256=sha(data), size=len(data))
    assert store.get(ref.key) == data
    assert store.get(ref.key, expected_sha256=ref.sha256) == data
    assert store.get(ref.key, expected_sha256=ref.sha256.upper()) == data


def test_overwrite_replaces_bytes_and_hash(store: BlobStore) -> None:
    store.put("k", b"first")
    ref = store.put("k", b"second version")
    assert store.get("k") == b"second version"
    assert store.stat("k") == ref


def test_put_accepts_bytearray_and_memoryview(store: BlobStore) -> None:
    assert store.put("a", bytearray(b"xyz")).sha256 == sha(b"xyz")
    assert store.put("b", memoryview(b"uvw")).sha256 == sha(b"uvw")
    assert store.get("a") == b"xyz" and store.get("b") == b"uvw"


def test_json_round_trip(store: BlobStore) -> None:
    obj = {"z": 1, "a": [1.5, None, True], "name": "Ærø ✓", "nested": {"b": 2, "a": 1}}
    ref = store.put_json("manifests/v1.json", obj)
    assert store.get_json("manifests/v1.json") == obj
    raw = store.get("manifests/v1.json", expected_sha256=ref.sha256)
    assert "Ærø ✓".encode() in raw, "JSON must be UTF-8, not \\u-escaped"
    assert list(json.loads(raw)) == ["a", "name", "nested", "z"], "keys must be sorted"
    # Same content, different insertion order -> same bytes -> same hash.
    assert store.put_json("manifests/v2.json", dict(reversed(obj.items()))).sha256 == ref.sha256


def test_get_json_rejects_non_json(store: BlobStore) -> None:
    store.put("notjson", b"\xff\xfe not json")
    with pytest.raises(BlobStoreError, match="notjson"):
        store.get_json("notjson")


def test_stat_exists_list_delete(store: BlobStore) -> None:
    keys = ["runs/2/b.bin", "runs/10/a.bin", "runs/1/x.bin", "models/m.json", "top"]
    for i, key in enumerate(keys):
        store.put(key, b"x" * i)

    assert store.list() == sorted(keys)
    assert store.list("runs/") == ["runs/1/x.bin", "runs/10/a.bin", "runs/2/b.bin"]
    assert store.list("runs/1") == ["runs/1/x.bin", "runs/10/a.bin"]  # plain string prefix
    assert store.list("runs/1/") == ["runs/1/x.bin"]
    assert store.list("nothing/") == []

    assert store.stat("runs/10/a.bin") == BlobRef("runs/10/a.bin", sha(b"x"), 1)
    assert store.exists("top") and not store.exists("runs/3/c.bin")
    assert not store.exists("runs"), "a key's parent is not itself a blob"

    store.delete("runs/10/a.bin")
    store.delete("runs/10/a.bin")  # idempotent
    store.delete("never/stored")  # idempotent
    assert not store.exists("runs/10/a.bin")
    assert store.list("runs/") == ["runs/1/x.bin", "runs/2/b.bin"]
    with pytest.raises(BlobNotFoundError):
        store.get("runs/10/a.bin")


def test_iter_chunks_streams_and_verifies(store: BlobStore) -> None:
    data = os.urandom(10_000)
    ref = store.put("big.bin", data)
    chunks = list(store.iter_chunks("big.bin", chunk_size=4096, expected_sha256=ref.sha256))
    assert b"".join(chunks) == data
    assert all(len(c) <= 4096 for c in chunks) and len(chunks) >= 3
    assert b"".join(store.iter_chunks("big.bin")) == data  # default 1 MiB chunks


def test_iter_chunks_missing_key_fails_at_call(store: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError, match="'nope.bin'"):
        store.iter_chunks("nope.bin")


def test_iter_chunks_abandoned_early_is_released(store: BlobStore) -> None:
    store.put("k", b"abc" * 1000)
    stream = store.iter_chunks("k", chunk_size=100)
    assert next(iter(stream)) == b"abc" * 33 + b"a"
    stream.close()  # type: ignore[attr-defined]
    unused = store.iter_chunks("k")  # never iterated: must not leak (ResourceWarning)
    del unused
    assert store.get("k") == b"abc" * 1000


@pytest.mark.parametrize(
    "recorded",
    ["old", "wrong", None],
    ids=["old-hash-kept", "wrong-hash", "no-hash"],
)
def test_tampered_blob_is_refused(store: BlobStore, recorded: str | None) -> None:
    ref = store.put("models/m/weights.safetensors", b"genuine weights")
    forged = b"forged weights!"  # same length, so size alone cannot tell
    recorded_hash = {"old": ref.sha256, "wrong": "0" * 64, None: None}[recorded]
    tamper(store, ref.key, forged, recorded=recorded_hash)

    with pytest.raises(BlobIntegrityError) as info:
        store.get(ref.key)
    assert ref.key in str(info.value) and store.url in str(info.value)

    # Streaming hands out the bytes but refuses at the end, before the caller commits them.
    received = []
    with pytest.raises(BlobIntegrityError, match="weights.safetensors"):
        for chunk in store.iter_chunks(ref.key, chunk_size=4):
            received.append(chunk)
    assert b"".join(received) == forged


def test_forged_blob_with_matching_hash_is_refused_by_expected_sha256(store: BlobStore) -> None:
    """Whoever can rewrite bytes can rewrite the recorded hash; the caller's hash catches it."""
    ref = store.put("w", b"genuine")
    tamper(store, "w", b"forged", recorded=sha(b"forged"))
    assert store.get("w") == b"forged"  # self-consistent, so only expected_sha256 can tell
    with pytest.raises(BlobIntegrityError, match="'w'"):
        store.get("w", expected_sha256=ref.sha256)
    with pytest.raises(BlobIntegrityError, match="'w'"):
        b"".join(store.iter_chunks("w", expected_sha256=ref.sha256))


def test_expected_sha256_mismatch_is_refused(store: BlobStore) -> None:
    store.put("k.bin", b"content")
    with pytest.raises(BlobIntegrityError, match="'k.bin'.*expected"):
        store.get("k.bin", expected_sha256=sha(b"other content"))
    with pytest.raises(BlobStoreError, match="not a 64-character hex"):
        store.get("k.bin", expected_sha256="abc")


def test_missing_key(store: BlobStore) -> None:
    for call in (store.get, store.stat):
        with pytest.raises(BlobNotFoundError, match="'absent/key.bin'") as info:
            call("absent/key.bin")
        assert store.url in str(info.value)
    assert not store.exists("absent/key.bin")


INVALID_KEYS = [
    "",
    "/abs/path",
    "..",
    "a/../b",
    "./a",
    "a//b",
    "a/",
    "with space",
    "ümlaut",
    "back\\slash",
    "tmp~",
    "weights.sha256",
    "dir.sha256/x",
    "x" * 1025,
]


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_rejected(store: BlobStore, key: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.stat(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.iter_chunks(key),
    ]
    for call in calls:
        with pytest.raises(BlobStoreError, match="invalid blob key") as info:
            call()
        assert repr(key)[:60] in str(info.value)
    assert store.list() == []


def test_invalid_list_prefix_is_rejected(store: BlobStore) -> None:
    for prefix in ["/x", "../", "a/../", "sp ace"]:
        with pytest.raises(BlobStoreError, match="invalid blob key prefix"):
            store.list(prefix)


def test_concurrent_puts_of_different_keys(store: BlobStore) -> None:
    payloads = {f"batches/{i % 4}/update-{i}.bin": os.urandom(1000 + i) for i in range(48)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        refs = list(pool.map(lambda kv: store.put(*kv), payloads.items()))
    assert {r.key: r.sha256 for r in refs} == {k: sha(v) for k, v in payloads.items()}
    assert store.list("batches/") == sorted(payloads)
    for key, data in payloads.items():
        assert store.get(key) == data


# ---------------------------------------------------------------------------------------
# open_store
# ---------------------------------------------------------------------------------------


def test_open_store_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for location in (tmp_path / "p", str(tmp_path / "s"), f"file://{tmp_path}/f"):
        store = open_store(location)
        assert isinstance(store, LocalBlobStore)
        assert Path(store.url).is_absolute() and Path(store.url).is_dir()
    assert open_store(f"file://{tmp_path}/f").url == str((tmp_path / "f").resolve())

    monkeypatch.chdir(tmp_path)
    relative = open_store("rel/blobs")
    assert relative.url == str((tmp_path / "rel" / "blobs").resolve())


def test_open_store_s3_does_no_io_until_used() -> None:
    settings = S3Settings(endpoint="127.0.0.1:9")
    store = open_store("s3://my-bucket/models/v1/", s3_settings=settings)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == ("my-bucket", "models/v1")
    assert store.url == "s3://my-bucket/models/v1"
    assert store.object_name("w.bin") == "models/v1/w.bin"
    bare = open_store("s3://my-bucket", s3_settings=settings)
    assert isinstance(bare, S3BlobStore) and bare.url == "s3://my-bucket" and bare.prefix == ""


@pytest.mark.parametrize(
    "location", ["s3://", "s3:///prefix", "gs://bucket/x", "", "s3://Bad_Bucket"]
)
def test_open_store_rejects_bad_locations(location: str) -> None:
    with pytest.raises(BlobStoreError):
        open_store(location, s3_settings=S3Settings())


def test_s3_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_S3_ENDPOINT", "minio:9000")
    monkeypatch.setenv("LETHE_S3_SECRET_KEY", "hunter2")
    monkeypatch.setenv("LETHE_S3_SECURE", "true")
    monkeypatch.setenv("LETHE_S3_CREATE_BUCKET", "false")
    settings = S3Settings()
    assert settings.endpoint == "minio:9000" and settings.secure and not settings.create_bucket
    assert settings.secret_key.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    defaults = S3Settings.model_fields
    assert (defaults["access_key"].default, defaults["region"].default) == ("lethe", "us-east-1")


# ---------------------------------------------------------------------------------------
# Local back end specifics: crash states, sidecars, disk full
# ---------------------------------------------------------------------------------------


def test_local_layout_and_hidden_sidecars(local_store: LocalBlobStore) -> None:
    ref = local_store.put("a/b.bin", b"data")
    sidecar = local_store.root / "a" / "b.bin.sha256"
    assert sidecar.read_text() == f"{ref.sha256}  b.bin\n"  # `sha256sum -c` format
    (local_store.root / "a" / ".b.bin.x1y2.tmp~").write_bytes(b"leftover temp file")
    assert local_store.list() == ["a/b.bin"]


def test_local_crash_before_blob_rename_leaves_no_blob(local_store: LocalBlobStore) -> None:
    """New key, crash after the sidecar rename: the key simply does not exist."""
    (local_store.root / "k.sha256").write_text(f"{sha(b'new')}  k\n")
    assert not local_store.exists("k") and local_store.list() == []
    with pytest.raises(BlobNotFoundError):
        local_store.get("k")
    assert local_store.put("k", b"new").sha256 == sha(b"new")
    assert local_store.get("k") == b"new"


def test_local_crash_mid_overwrite_reads_as_corrupt(local_store: LocalBlobStore) -> None:
    """Overwrite, crash between the renames: new sidecar, old blob -> refused, not wrong."""
    local_store.put("k", b"old")
    (local_store.root / "k.sha256").write_text(f"{sha(b'new')}  k\n")
    with pytest.raises(BlobIntegrityError, match="'k'"):
        local_store.get("k")


@pytest.mark.parametrize("failing_write", [1, 2], ids=["sidecar", "blob"])
def test_local_disk_full_is_reported_and_cleaned_up(
    local_store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, failing_write: int
) -> None:
    """ENOSPC on either temp file: clear error, no temp debris, previous version intact."""
    local_store.put("d/keep.bin", b"previous")
    real_write = local_module._write_all
    writes = 0

    def full_disk(fileobj: io.BufferedWriter, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes % 2 != failing_write % 2:
            return real_write(fileobj, data)
        fileobj.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_module, "_write_all", full_disk)
    with pytest.raises(BlobStoreError, match=r"disk full.*'d/new.bin'") as info:
        local_store.put("d/new.bin", b"z" * 10_000)
    assert local_store.url in str(info.value)
    with pytest.raises(BlobStoreError, match="disk full"):
        local_store.put("d/keep.bin", b"replacement")
    monkeypatch.undo()

    leftovers = sorted(p.name for p in (local_store.root / "d").iterdir())
    assert leftovers == ["keep.bin", "keep.bin.sha256"], "temp files must be removed"
    assert local_store.get("d/keep.bin") == b"previous"
    assert not local_store.exists("d/new.bin")


def test_local_delete_prunes_empty_directories(local_store: LocalBlobStore) -> None:
    local_store.put("subjects/s-17/x/blob.bin", b"1")
    local_store.put("subjects/s-18/blob.bin", b"2")
    local_store.delete("subjects/s-17/x/blob.bin")
    assert not (local_store.root / "subjects" / "s-17").exists()
    assert (local_store.root / "subjects" / "s-18" / "blob.bin").exists()
    assert local_store.root.is_dir()


def test_local_concurrent_overwrites_of_one_key_stay_consistent(
    local_store: LocalBlobStore,
) -> None:
    versions = [bytes([i]) * (5000 + i) for i in range(32)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda data: local_store.put("same", data), versions))
    assert local_store.get("same") in versions


def test_local_key_whose_parent_is_a_blob(local_store: LocalBlobStore) -> None:
    local_store.put("a", b"file")
    assert not local_store.exists("a/b")
    with pytest.raises(BlobNotFoundError):
        local_store.get("a/b")
    with pytest.raises(BlobStoreError, match="'a/b'"):
        local_store.put("a/b", b"cannot nest under a file")


def test_local_non_durable_mode_round_trips(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path, durable=False)
    assert store.get(store.put("k", b"v").key) == b"v"


# ---------------------------------------------------------------------------------------
# S3 back end specifics
# ---------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_s3_unreachable_endpoint_names_it() -> None:
    endpoint = f"127.0.0.1:{_closed_port()}"
    store = S3BlobStore("bucket", "", S3Settings(endpoint=endpoint, retries=1))
    with pytest.raises(BlobStoreError, match=f"{endpoint}.*unreachable") as info:
        store.get("k")
    assert not isinstance(info.value, BlobNotFoundError)


@pytest.mark.s3
def test_s3_sha256_is_object_metadata(s3_store: S3BlobStore) -> None:
    ref = s3_store.put("k", b"payload")
    obj = s3_store.client.stat_object(s3_store.bucket, "blobs/k")
    assert obj.metadata["x-amz-meta-sha256"] == ref.sha256


@pytest.mark.s3
def test_s3_prefixes_isolate_stores(s3_store: S3BlobStore, s3_settings: S3Settings) -> None:
    other = S3BlobStore(s3_store.bucket, "other", s3_settings)
    s3_store.put("k", b"mine")
    other.put("k", b"theirs")
    assert s3_store.list() == ["k"] and other.list() == ["k"]
    assert s3_store.get("k") == b"mine" and other.get("k") == b"theirs"
    root = S3BlobStore(s3_store.bucket, "", s3_settings)
    assert root.list() == ["blobs/k", "other/k"]


@pytest.mark.s3
def test_s3_missing_bucket_without_create(s3_settings: S3Settings) -> None:
    settings = s3_settings.model_copy(update={"create_bucket": False})
    store = S3BlobStore("lethe-test-never-created", "", settings)
    with pytest.raises(BlobStoreError, match="lethe-test-never-created.*does not exist"):
        store.put("k", b"x")


@pytest.mark.s3
def test_s3_multipart_upload_keeps_sha256(s3_store: S3BlobStore) -> None:
    data = os.urandom(6 * 1024 * 1024 + 123)  # above minio's 5 MiB part size
    ref = s3_store.put("large.safetensors", data)
    assert s3_store.stat("large.safetensors") == ref
    assert b"".join(s3_store.iter_chunks(ref.key, expected_sha256=ref.sha256)) == data


def object_versions(store: S3BlobStore, key: str) -> list[tuple[str, bool]]:
    """(version id, is a delete marker) of every version of exactly ``key`` in the bucket."""
    name = store.object_name(key)
    return [
        (obj.version_id, bool(obj.is_delete_marker))
        for obj in store.client.list_objects(store.bucket, prefix=name, recursive=True, include_version=True)
        if obj.object_name == name
    ]


def drop_versioned_bucket(store: S3BlobStore) -> None:
    """Remove every version and delete marker, then the bucket (a versioned bucket keeps
    them after a plain delete, and refuses to go while any is left). Best effort: a bucket
    left behind only costs the test server's memory."""
    import contextlib

    client = store.client
    with contextlib.suppress(Exception):  # moto 5.2 fails some removals after a suspension
        for obj in list(client.list_objects(store.bucket, recursive=True, include_version=True)):
            client.remove_object(store.bucket, obj.object_name, version_id=obj.version_id)
        client.remove_bucket(store.bucket)


@pytest.mark.s3
@pytest.mark.parametrize("state", ["Enabled", "Suspended"])
def test_s3_delete_on_a_versioned_bucket_leaves_no_version(
    s3_settings: S3Settings, state: str
) -> None:
    """A plain DELETE on a versioned bucket only hides the key behind a delete marker; the
    store's delete removes every version and marker of exactly that key (suspended
    versioning keeps the versions written before, so it counts as versioned too)."""
    import uuid

    from minio.versioningconfig import ENABLED, SUSPENDED, VersioningConfig

    store = S3BlobStore(f"lethe-test-{uuid.uuid4().hex[:20]}", "blobs", s3_settings)
    try:
        store.put("seed", b"creates the bucket")
        store.client.set_bucket_versioning(store.bucket, VersioningConfig(ENABLED))
        for i in range(3):
            store.put("runs/r/updates/k", f"version {i}".encode())
        if state == "Enabled":  # moto 5.2 cannot remove a delete marker once suspended
            store.client.remove_object(store.bucket, store.object_name("runs/r/updates/k"))
        store.put("runs/r/updates/k", b"current")
        store.put("runs/r/updates/k2", b"a sibling sharing the prefix")
        if state == "Suspended":
            store.client.set_bucket_versioning(store.bucket, VersioningConfig(SUSPENDED))
        versions = object_versions(store, "runs/r/updates/k")
        assert len(versions) == (5 if state == "Enabled" else 4)
        assert any(marker for _, marker in versions) == (state == "Enabled")

        assert store.bucket_versioned()
        store.delete("runs/r/updates/k")
        assert object_versions(store, "runs/r/updates/k") == []
        assert not store.exists("runs/r/updates/k")
        assert store.get("runs/r/updates/k2") == b"a sibling sharing the prefix"
        assert len(object_versions(store, "runs/r/updates/k2")) == 1
        store.delete("runs/r/updates/k")  # idempotent
        store.delete("never/written")
    finally:
        drop_versioned_bucket(store)


@pytest.mark.s3
def test_s3_delete_on_an_unversioned_bucket_is_one_delete(s3_store: S3BlobStore) -> None:
    s3_store.put("k", b"x")
    assert not s3_store.bucket_versioned()
    s3_store.delete("k")
    assert object_versions(s3_store, "k") == [] and not s3_store.exists("k")
