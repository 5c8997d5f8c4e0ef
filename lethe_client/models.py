"""Typed shapes of what the client returns.

Server answers are pydantic models parsed from the JSON the API documents (fields the
server adds later are kept in ``model_extra``, never an error); what the client itself
makes (downloaded weights, a report, a signed receipt) are dataclasses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lethe_client.errors import ReceiptInvalid

#: The tiers :meth:`lethe_client.Client.wait` waits for.
Tier = Literal["approximate", "exact"]
TIERS: tuple[Tier, ...] = ("approximate", "exact")

#: Request statuses after which nothing more happens without an admin (``failed`` may be
#: retried by one) and that answer no tier.
UNANSWERED_FINAL = frozenset({"failed", "denied", "cancelled"})


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# ---------------------------------------------------------------------------------------
# Erasure requests
# ---------------------------------------------------------------------------------------


class Accepted(_Answer):
    """``POST /erasure-requests`` answered 202: the request is stored and queued."""

    id: str
    status: str
    status_url: str
    due_at: datetime
    #: the Idempotency-Key sent (given, or made by the client): file again with it to get
    #: the same request back
    idempotency_key: str = ""
    #: the server answered an earlier filing with the same key and body
    replayed: bool = False


class JobVersion(_Answer):
    """The version answering a job (its newest tier)."""

    number: int
    weights_sha256: str
    metrics: dict[str, Any] = Field(default_factory=dict)


class Job(_Answer):
    """One target model's job within a request."""

    job_id: int
    model: str
    method: str
    status: str
    progress: float = 0.0
    step: str | None = None
    error: str | None = None
    attempts: int = 0
    device: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    method_options: dict[str, Any] | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    version: JobVersion | None = None
    guarantee: str | None = None
    approximate_version: int | None = None
    exact_version: int | None = None
    exact_at: datetime | None = None
    exact_due_at: datetime | None = None
    reapplies_job_id: int | None = None


class RequestStatus(_Answer):
    """``GET /requests/{id}/status``: the request's state and its jobs' tiers."""

    id: str
    status: str
    subject_id: str | None = None
    sample_ids: list[str] = Field(default_factory=list)
    method: str | None = None
    received_at: datetime
    due_at: datetime
    overdue: bool = False
    exact: bool = False
    completed_at: datetime | None = None
    error: str | None = None
    jobs: list[Job] = Field(default_factory=list)

    def reached(self, tier: Tier) -> bool:
        """Whether the request answers ``tier``: ``approximate`` once it is completed (every
        target model published a version without the samples' influence), ``exact`` once
        it is completed and every job is exact."""
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
        if self.status != "completed":
            return False
        return tier == "approximate" or self.exact

    @property
    def guarantee(self) -> str:
        """``exact``, ``approximate`` or ``none``: the tier the request answers now."""
        if self.reached("exact"):
            return "exact"
        return "approximate" if self.reached("approximate") else "none"


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


class ModelSummary(_Answer):
    """One item of ``GET /models``."""

    name: str
    dataset: str
    architecture: str
    method: str
    unlearn_method: str
    status: str
    latest_version: int | None = None
    created_at: datetime


class ModelInfo(ModelSummary):
    """``GET /models/{name}``: the summary plus the version count, policy and training run."""

    versions: int = 0
    erasure_policy: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] | None = None


class Version(_Answer):
    """``GET /models/{name}/versions[/{v}]``: one published version."""

    model: str
    number: int
    parent: int | None = None
    method: str
    guarantee: str
    created_at: datetime
    weights_sha256: str
    size: int
    metrics: dict[str, Any] = Field(default_factory=dict)
    withdraw_at: datetime | None = None
    withdrawn_at: datetime | None = None
    successor: int | None = None
    withdrawn_for: list[str] = Field(default_factory=list)
    answers: list[str] = Field(default_factory=list)
    weights_url: str = ""

    @property
    def withdrawn(self) -> bool:
        """The withdrawal is in force: its weights and report answer 410."""
        return self.withdrawn_at is not None


# ---------------------------------------------------------------------------------------
# Receipts
# ---------------------------------------------------------------------------------------


class ReceiptKey(_Answer):
    """``GET /receipt-key``: the public key that verifies receipts."""

    alg: str
    key_id: str
    public_key: str
    pem: str


class ReceiptSignature(_Answer):
    alg: str
    key_id: str
    value: str


@dataclass(frozen=True)
class SignedReceipt:
    """``GET /requests/{id}/receipt``: the signed document, byte for byte as served
    (``raw``: what to file and verify), and its parsed content."""

    raw: bytes
    receipt: dict[str, Any]
    signature: ReceiptSignature
    #: set once :meth:`lethe_client.Client.receipt` verified it (``verify=True``) with the
    #: key whose ``key_id`` this is
    verified_with: str | None = None

    @property
    def request_id(self) -> str:
        return str(self.receipt.get("request_id", ""))

    @property
    def stage(self) -> str:
        """``received``, ``approximate``, ``exact`` or ``purged``."""
        return str(self.receipt.get("stage", ""))

    @property
    def status(self) -> str:
        return str(self.receipt.get("status", ""))

    def verify(self, key: ReceiptKey | str | bytes, *, allow_reformatted: bool = False) -> dict[str, Any]:
        """Check the signature offline (``unlearning_core.receipts.verify``) against the
        service's public key (a :class:`ReceiptKey`, PEM, the JSON of ``GET /receipt-key``
        or the base64 raw key); returns the receipt or raises
        :class:`lethe_client.ReceiptInvalid` naming the problem."""
        return verify_receipt(self.raw, key, allow_reformatted=allow_reformatted)

    def save(self, path: str | Path) -> Path:
        """Write the receipt as served (the bytes that verify)."""
        target = Path(path)
        target.write_bytes(self.raw)
        return target

    @classmethod
    def parse(cls, raw: bytes) -> SignedReceipt:
        """The document's parts (``ValueError`` if it is not a signed receipt); no check of
        the signature: :meth:`verify` does that."""
        document = json.loads(raw)
        if not isinstance(document, dict) or not isinstance(document.get("receipt"), dict):
            raise ValueError('expected {"receipt": {...}, "signature": {...}}')  # noqa: TRY004 - bad content
        return cls(
            raw=raw,
            receipt=dict(document["receipt"]),
            signature=ReceiptSignature.model_validate(document.get("signature") or {}),
        )


# ---------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PulledWeights:
    """What :meth:`lethe_client.Client.pull` left on disk."""

    model: str
    #: the version number the server resolved (``latest`` becomes a number)
    version: int
    sha256: str
    size: int
    #: the verified file: ``out`` when given, else the file in the cache
    path: Path
    #: False when the server answered 304 Not Modified (the cached copy is current)
    downloaded: bool
    #: body bytes received for this pull (0 after a 304)
    bytes_downloaded: int
    #: HTTP status of the weights answer: 200 or 304
    http_status: int
    #: a cached copy whose bytes no longer matched its sha256 was found, dropped and
    #: downloaded again
    cache_repaired: bool = False


@dataclass(frozen=True)
class Report:
    """A version's erasure report (``GET /models/{name}/versions/{v}/report``)."""

    model: str
    version: int
    format: Literal["html", "pdf"]
    content: bytes
    media_type: str
    #: sha256 of the stored HTML report (``X-Content-SHA256``), if the server sent it
    sha256: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """The HTML report as text (not for a PDF)."""
        return self.content.decode("utf-8")

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_bytes(self.content)
        return target


def verify_receipt(
    raw: bytes, key: ReceiptKey | str | bytes, *, allow_reformatted: bool = False
) -> dict[str, Any]:
    """``unlearning_core.receipts.verify`` with the key in any form the service hands out;
    :class:`ReceiptInvalid` naming the problem."""
    try:
        from unlearning_core.receipts import ReceiptError, load_public_key, verify
    except ImportError as exc:  # pragma: no cover - the client ships with the lethe package
        raise ReceiptInvalid(
            f"offline verification needs the lethe package's unlearning_core ({exc})"
        ) from None
    material: str | bytes = key.public_key if isinstance(key, ReceiptKey) else key
    try:
        return verify(raw, load_public_key(material), allow_reformatted=allow_reformatted)
    except ReceiptError as exc:
        raise ReceiptInvalid(str(exc)) from None
