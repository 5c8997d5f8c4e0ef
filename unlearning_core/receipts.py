"""Signed erasure receipts: canonical JSON, Ed25519 signing and offline verification.

A receipt is the document a data subject's controller files as evidence of what Lethe did
with an erasure request. The service signs it (:func:`issue`); anyone holding the service's
public key checks it offline (:func:`verify`, ``lethe receipt verify``) with nothing but
this module: no web, no database.

The file is ``{"receipt": {...}, "signature": {"alg": "Ed25519", "key_id": ..., "value":
...}}``. The signature covers the canonical JSON of ``receipt`` (keys sorted, no whitespace,
UTF-8, see :func:`canonical_json`); the service serves the whole document in that canonical
form too, so by default :func:`verify` also requires the file to be byte-for-byte what was
issued: *any* changed byte fails, even one that leaves the parsed content equal (``\\u001f``
written ``\\u001F``, a float digit below double precision). ``allow_reformatted`` accepts a
re-indented copy whose content is still as signed.

A receipt never vouches for itself: it names its key only by ``key_id`` (the first 16 hex
digits of the sha256 of the raw public key), and verification always takes the public key
from the caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from unlearning_core.errors import LetheError

ALG = "Ed25519"
#: The receipt format; a later, incompatible layout gets a new number.
FORMAT = "lethe.erasure-receipt/1"
RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_PEM = b"-----BEGIN"


class ReceiptError(LetheError):
    """A receipt or key that cannot be read, or a receipt that fails verification."""


# ---------------------------------------------------------------------------------------
# Canonical form
# ---------------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The bytes that are signed: keys sorted, no whitespace, UTF-8 (not ``\\u`` escapes),
    no NaN or Infinity (strict JSON has none, and a verifier in another language would
    choke on them)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


# ---------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """Names a key without being one: the first 16 hex digits of the raw key's sha256."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public_key(key)).decode("ascii")


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file holding it is mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _b64_raw(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptError(f"{what} is neither PEM nor base64") from None
    if len(raw) != RAW_KEY_BYTES:
        raise ReceiptError(f"{what} is {len(raw)} bytes once base64-decoded; an Ed25519 key is {RAW_KEY_BYTES}")
    return raw


def _bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def load_private_key(data: bytes | str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8, as ``openssl genpkey -algorithm ed25519``
    writes) or the base64 of its raw 32 bytes."""
    blob = _bytes(data).strip()
    if blob.startswith(_PEM):
        try:
            key = serialization.load_pem_private_key(blob, password=None)
        except (ValueError, TypeError) as exc:
            raise ReceiptError(f"the private key PEM cannot be read ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ReceiptError(f"the private key is a {type(key).__name__}, not an Ed25519 key")
        return key
    try:
        text = blob.decode("ascii")
    except UnicodeDecodeError:
        raise ReceiptError("the private key is neither PEM nor base64") from None
    return Ed25519PrivateKey.from_private_bytes(_b64_raw(text, "the private key"))


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key in any form the service hands out: PEM, the base64 of the raw
    32 bytes (``public_key`` of ``GET /receipt-key``), that endpoint's whole JSON answer,
    or the raw 32 bytes themselves."""
    blob = _bytes(data).strip()
    if blob.startswith(_PEM):
        try:
            key = serialization.load_pem_public_key(blob)
        except (ValueError, TypeError) as exc:
            raise ReceiptError(f"the public key PEM cannot be read ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ReceiptError(f"the public key is a {type(key).__name__}, not an Ed25519 key")
        return key
    if blob.startswith(b"{"):
        try:
            served = json.loads(blob)
            text = served["public_key"]
            if served.get("alg", ALG) != ALG or not isinstance(text, str):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ReceiptError(
                'the key is JSON but not the answer of GET /receipt-key ({"alg": "Ed25519", "public_key": ...})'
            ) from None
        return _public_from_raw(_b64_raw(text, "the public key"))
    if len(_bytes(data)) == RAW_KEY_BYTES:  # a raw key file (binary: not stripped)
        return _public_from_raw(_bytes(data))
    try:
        text = blob.decode("ascii")
    except UnicodeDecodeError:
        raise ReceiptError("the public key is neither PEM, JSON, base64 nor 32 raw bytes") from None
    return _public_from_raw(_b64_raw(text, "the public key"))


def _public_from_raw(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ReceiptError(f"not an Ed25519 public key ({exc})") from None


# ---------------------------------------------------------------------------------------
# Signing and verifying
# ---------------------------------------------------------------------------------------


def sign(receipt: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed document: the receipt and an Ed25519 signature over its canonical JSON."""
    body = dict(receipt)
    signature = key.sign(canonical_json(body))
    return {
        "receipt": body,
        "signature": {
            "alg": ALG,
            "key_id": key_id(key.public_key()),
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


def issue(receipt: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The signed document as the service serves it: canonical JSON bytes, so that the
    file a controller keeps can be checked byte for byte."""
    return canonical_json(sign(receipt, key))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse a repeated key: parsers differ on which one wins, so a document with two
    ``"stage"`` keys could show one thing and be verified as another."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ReceiptError(f"the receipt repeats the key {name!r}")
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise ReceiptError(f"the receipt holds {name}, which is not JSON")


def parse(document: bytes | str) -> dict[str, Any]:
    """The signed document as a dict, or :class:`ReceiptError` naming why it is not one."""
    blob = _bytes(document)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReceiptError(f"the file is not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ReceiptError(f"the file is not valid JSON ({exc})") from None
    if not isinstance(value, dict) or set(value) != {"receipt", "signature"}:
        raise ReceiptError('not a signed receipt: expected {"receipt": {...}, "signature": {...}}')
    if not isinstance(value["receipt"], dict):
        raise ReceiptError('"receipt" is not an object')
    sig = value["signature"]
    if not isinstance(sig, dict) or not all(isinstance(sig.get(k), str) for k in ("alg", "key_id", "value")):
        raise ReceiptError('"signature" must hold the strings "alg", "key_id" and "value"')
    return value


def verify(
    document: bytes | str, key: Ed25519PublicKey, *, allow_reformatted: bool = False
) -> dict[str, Any]:
    """Check a signed receipt against the service's public key; returns the receipt.

    Raises :class:`ReceiptError` naming the problem: not JSON, not a receipt, another
    algorithm, signed by another key, a signature that does not match the content (a
    changed byte), or (unless ``allow_reformatted``) a file that is not byte for byte the
    canonical document the service issued. One trailing newline is allowed.
    """
    signed = parse(document)
    sig = signed["signature"]
    if sig["alg"] != ALG:
        raise ReceiptError(f"signature algorithm {sig['alg']!r} is not {ALG}")
    expected = key_id(key)
    if sig["key_id"] != expected:
        raise ReceiptError(
            f"the receipt was signed by key {sig['key_id']!r}, not by the given key {expected!r}"
        )
    try:
        value = base64.b64decode(sig["value"], validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptError("the signature value is not base64") from None
    if len(value) != SIGNATURE_BYTES:
        raise ReceiptError(f"the signature is {len(value)} bytes; an Ed25519 signature is {SIGNATURE_BYTES}")
    if base64.b64encode(value).decode("ascii") != sig["value"]:
        # base64's last character carries unused bits: another spelling of the same bytes
        raise ReceiptError("the signature value is not the base64 the service wrote (changed)")
    try:
        key.verify(value, canonical_json(signed["receipt"]))
    except InvalidSignature:
        raise ReceiptError(
            "bad signature: the receipt's content is not what the key signed (changed after issue)"
        ) from None
    if not allow_reformatted:
        blob = _bytes(document)
        body = blob[:-1] if blob.endswith(b"\n") else blob
        if body != canonical_json(signed):
            raise ReceiptError(
                "the content is as signed, but the file is not byte for byte the document the "
                "service issued (reformatted or edited); allow_reformatted / --allow-reformatted "
                "accepts a re-indented copy"
            )
    return signed["receipt"]
