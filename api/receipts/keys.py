"""The service's receipt signing key: from the operator, or made once and kept in a file.

``LETHE_RECEIPT_SIGNING_KEY`` (PEM or base64 of the raw 32 bytes) wins: several API
replicas must sign with one key, or a controller would need a key per replica. Without it
the key lives in ``LETHE_RECEIPT_KEY_FILE`` (``var/receipt-signing-key.pem``), created on
first use with mode 0600, like ``var/admin-key.txt``: a restart signs with the same key,
so receipts issued before it still verify against ``GET /receipt-key``.

Read on every use, never cached: reading a 119-byte file is nothing next to a receipt's
queries, and replacing the file (or the setting, on restart) rotates the key without a
stale copy in some process.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.config import Settings, get_settings
from unlearning_core import receipts

log = logging.getLogger("lethe.receipts")


class SigningKeyError(Exception):
    """The configured key is unusable (bad PEM or base64, an unreadable or unwritable file):
    an operator's problem, answered 503 without the details, which are logged."""


def signing_key(settings: Settings | None = None) -> Ed25519PrivateKey:
    """The private key receipts are signed with (see the module docstring)."""
    settings = settings or get_settings()
    if settings.receipt_signing_key is not None:
        try:
            return receipts.load_private_key(settings.receipt_signing_key.get_secret_value())
        except receipts.ReceiptError as exc:
            raise SigningKeyError(f"LETHE_RECEIPT_SIGNING_KEY: {exc}") from None
    return _from_file(settings.receipt_key_file)


def _from_file(path: Path) -> Ed25519PrivateKey:
    try:
        if not path.exists():
            _create(path)
        return receipts.load_private_key(path.read_bytes())
    except receipts.ReceiptError as exc:
        raise SigningKeyError(f"{path}: {exc}") from None
    except OSError as exc:
        raise SigningKeyError(f"{path}: {exc}") from None


def _create(path: Path) -> None:
    """Write a new key to ``path`` unless another process got there first.

    The key is written whole to a private temporary file, then hard-linked into place: a
    link fails when the name exists, so two processes starting together end up with one
    key (the loser reads the winner's), and no reader ever sees half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(receipts.private_key_pem(receipts.generate_private_key()))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
            log.info("created a receipt signing key in %s (mode 0600)", path)
        except FileExistsError:
            pass  # another process made it meanwhile: use theirs
    finally:
        tmp.unlink(missing_ok=True)
