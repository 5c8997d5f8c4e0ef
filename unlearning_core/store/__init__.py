"""Blob storage behind one small interface: a local directory or an S3 bucket.

Every blob is written with its sha256 and verified on every read (see
:class:`BlobStore`). Pick a back end with :func:`open_store`::

    store = open_store("s3://lethe/models")      # or "/var/lib/lethe/blobs"
    ref = store.put("runs/1/weights.safetensors", data)
    store.get(ref.key, expected_sha256=ref.sha256)
"""

from unlearning_core.store.base import BlobRef, BlobStore
from unlearning_core.store.factory import open_store
from unlearning_core.store.local import LocalBlobStore
from unlearning_core.store.s3 import S3BlobStore
from unlearning_core.store.settings import S3Settings

__all__ = [
    "BlobRef",
    "BlobStore",
    "LocalBlobStore",
    "S3BlobStore",
    "S3Settings",
    "open_store",
]
