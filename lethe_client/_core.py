"""The one implementation behind :class:`~lethe_client.Client` and
:class:`~lethe_client.AsyncClient`.

Every operation (file a request, wait for a tier, pull weights, ...) is written once, here,
as a generator that *yields* what it needs done and gets the outcome sent back:

- :class:`Call`: send this HTTP request, give me the :class:`httpx.Response` (for a call
  with a ``download``, a 200 body is streamed into it instead of memory); a failed
  connection is thrown back into the generator as the :class:`httpx.TransportError`;
- :class:`Pause`: sleep this many seconds.

Request building, retries with backoff, response parsing, error mapping, the wait loop
and the weights cache all live in these generators. The sync client drives them with
``httpx.Client`` and ``time.sleep``, the async client with ``httpx.AsyncClient`` and
``anyio.sleep``: those two small drivers are the only code that differs.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin

import httpx

from lethe_client.cache import Download, WeightsCache, copy_out, default_cache_dir
from lethe_client.errors import (
    ERROR_OF_STATUS,
    ConnectionFailed,
    Gone,
    IntegrityError,
    LetheError,
    RequestFailed,
    ServerError,
    ValidationFailed,
    WaitTimeout,
)
from lethe_client.models import (
    TIERS,
    UNANSWERED_FINAL,
    Accepted,
    ModelInfo,
    ModelSummary,
    PulledWeights,
    ReceiptKey,
    Report,
    RequestStatus,
    SignedReceipt,
    Tier,
    Version,
    verify_receipt,
)

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
LATEST = "latest"


# ---------------------------------------------------------------------------------------
# What an operation asks its driver to do
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One HTTP exchange. ``download``: stream a 200 body into it (other answers are read
    into memory, to be parsed as errors)."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    json: Any = None
    download: Download | None = None


@dataclass(frozen=True)
class Pause:
    seconds: float


Effect = Call | Pause
#: An operation: yields effects, receives their outcome, returns ``T``.
Op = Generator[Effect, Any, T]


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """Retries of idempotent calls (every call the client makes: reads, and filings, which
    always carry an Idempotency-Key) on a failed connection or timeout and on 502, 503 and
    504 answers: up to ``attempts`` tries in all, sleeping ``backoff * 2**(n-1)`` seconds
    (at most ``max_backoff``, plus up to ``jitter`` of it at random) between them, or the
    server's ``Retry-After`` when it names one (at most ``max_retry_after``).
    ``Retry(attempts=1)`` turns retries off."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: float = 0.1
    statuses: frozenset[int] = frozenset({502, 503, 504})
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts counts the first try: at least 1")

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to sleep after try number ``attempt`` (1-based) failed."""
        if response is not None:
            after = _retry_after(response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_retry_after)
        base = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return base + random.uniform(0, self.jitter * base)  # jitter, not cryptography


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use the backoff instead


@dataclass(frozen=True)
class Config:
    """What both clients are made of (see :class:`lethe_client.Client` for the meaning)."""

    base_url: str
    api_key: str | None
    timeout: float
    retry: Retry
    cache_dir: Path
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        base_url: str | None,
        api_key: str | None,
        *,
        timeout: float,
        retry: Retry | None,
        cache_dir: str | Path | None,
        headers: Mapping[str, str] | None,
    ) -> Config:
        url = base_url or os.environ.get("LETHE_URL") or DEFAULT_URL
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the Lethe URL must start with http:// or https://, got {url!r}")
        return cls(
            base_url=url.rstrip("/"),
            api_key=api_key if api_key is not None else (os.environ.get("LETHE_API_KEY") or None),
            timeout=timeout,
            retry=retry or Retry(),
            cache_dir=Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(),
            headers=dict(headers or {}),
        )

    def http_options(self) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client`` / ``httpx.AsyncClient``."""
        from lethe_client._version import __version__

        headers = {"User-Agent": f"lethe-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self.headers)
        return {
            "base_url": self.base_url, "headers": headers, "timeout": httpx.Timeout(self.timeout)
        }


# ---------------------------------------------------------------------------------------
# Answers and errors
# ---------------------------------------------------------------------------------------


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, httpx.ResponseNotRead):
        return None


def error_of(response: httpx.Response) -> LetheError:
    """The typed exception of an error answer, with the server's ``detail``."""
    body = _body(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str) or not detail:
        try:
            text = response.text.strip()
        except httpx.ResponseNotRead:
            text = ""
        detail = text[:500] or response.reason_phrase or "error"
    common: dict[str, Any] = {
        "status_code": response.status_code,
        "method": response.request.method,
        "url": str(response.request.url),
        "body": body,
    }
    status = response.status_code
    kind = ERROR_OF_STATUS.get(status) or (ServerError if status >= 500 else LetheError)
    if kind is Gone:
        link = response.links.get("successor-version", {}).get("url")
        return Gone(
            detail,
            successor=_successor_number(link),
            successor_url=urljoin(str(response.request.url), link) if link else None,
            **common,
        )
    if kind is ValidationFailed:
        errors = body.get("errors") if isinstance(body, dict) else None
        listed = errors if isinstance(errors, list) else None
        return ValidationFailed(detail, errors=listed, **common)
    if issubclass(kind, ServerError):
        request_id = body.get("request_id") if isinstance(body, dict) else None
        return kind(detail, request_id=request_id or response.headers.get("x-request-id"), **common)
    return kind(detail, **common)


def _successor_number(link: str | None) -> int | None:
    """``/models/{name}/versions/{n}`` -> ``n``."""
    if not link:
        return None
    tail = link.rstrip("/").rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


def expect(response: httpx.Response, *statuses: int) -> httpx.Response:
    """``response`` if its status is one of ``statuses``; else the typed error of an error
    answer, or a :class:`LetheError` naming an answer the client does not expect."""
    if response.status_code in statuses:
        return response
    if response.status_code >= 400:
        raise error_of(response)
    raise LetheError(
        f"unexpected answer {response.status_code} {response.reason_phrase} to "
        f"{response.request.method} {response.request.url}",
        status_code=response.status_code,
        method=response.request.method,
        url=str(response.request.url),
    )


def json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise LetheError(
            f"the answer to {response.request.method} {response.request.url} is not JSON",
            status_code=response.status_code,
        ) from None


def _segment(value: str | int) -> str:
    """A path segment: ids and names quoted, so nothing in them changes the path."""
    return quote(str(value), safe="")


def version_ref(version: int | str) -> str:
    """``latest`` or a version number (as text); ``ValueError`` for anything else."""
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return str(version)
    text = version.strip() if isinstance(version, str) else ""
    if text == LATEST:
        return LATEST
    if text.isascii() and text.isdigit():
        return str(int(text))
    raise ValueError(f"a version is a number or 'latest', not {version!r}")


def new_idempotency_key() -> str:
    return f"lethe-client-{uuid.uuid4()}"


# ---------------------------------------------------------------------------------------
# The operations
# ---------------------------------------------------------------------------------------


class Operations:
    """Every client operation, once, as a generator of :data:`Effect`."""

    def __init__(self, config: Config) -> None:
        self.config = config

    # -- the exchange, with retries -------------------------------------------------------

    def exchange(self, call: Call, *, idempotent: bool = True) -> Op[httpx.Response]:
        retry = self.config.retry
        attempt = 0
        while True:
            attempt += 1
            if call.download is not None:
                call.download.reset()
            try:
                response: httpx.Response = yield call
            except httpx.TransportError as exc:
                if not idempotent or attempt >= retry.attempts:
                    raise ConnectionFailed(
                        f"{call.method} {self.config.base_url}{call.path} failed after {attempt} "
                        f"attempt(s): {type(exc).__name__}: {exc or 'no answer'}",
                        method=call.method,
                        url=f"{self.config.base_url}{call.path}",
                    ) from exc
                yield Pause(retry.delay(attempt))
                continue
            if idempotent and response.status_code in retry.statuses and attempt < retry.attempts:
                yield Pause(retry.delay(attempt, response))
                continue
            return response

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Op[Any]:
        response = yield from self.exchange(Call("GET", path, params=params))
        return json_of(expect(response, 200))

    # -- erasure requests -------------------------------------------------------------------

    def request_erasure(
        self,
        *,
        subject_id: str | None,
        sample_ids: Sequence[str] | None,
        models: Sequence[str] | None,
        method: str | None,
        method_options: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> Op[Accepted]:
        if not subject_id and not sample_ids:
            raise ValueError("name what to erase: subject_id and/or sample_ids")
        if isinstance(sample_ids, str) or isinstance(models, str):
            raise TypeError("sample_ids and models are lists of strings, not one string")
        body: dict[str, Any] = {}
        if subject_id:
            body["subject_id"] = subject_id
        if sample_ids:
            body["sample_ids"] = list(sample_ids)
        if models:
            body["models"] = list(models)
        if method:
            body["method"] = method
        if method_options:
            body["method_options"] = dict(method_options)
        key = idempotency_key or new_idempotency_key()
        response = yield from self.exchange(
            Call("POST", "/erasure-requests", json=body, headers={"Idempotency-Key": key}),
            idempotent=True,  # the key makes a repeat return the same request
        )
        data = json_of(expect(response, 202))
        return Accepted.model_validate(
            {
                **data,
                "idempotency_key": key,
                "replayed": response.headers.get("idempotent-replayed", "").lower() == "true",
            }
        )

    def status(self, request_id: str) -> Op[RequestStatus]:
        data = yield from self.get_json(f"/requests/{_segment(request_id)}/status")
        return RequestStatus.model_validate(data)

    def wait(
        self,
        request_id: str,
        *,
        tier: Tier,
        timeout: float,
        interval: float,
        max_interval: float,
        factor: float = 1.5,
    ) -> Op[RequestStatus]:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
        if timeout < 0 or interval <= 0 or max_interval < interval:
            raise ValueError("need timeout >= 0 and 0 < interval <= max_interval")
        deadline = time.monotonic() + timeout
        delay = interval
        while True:
            status = yield from self.status(request_id)
            if status.reached(tier):
                return status
            if status.status in UNANSWERED_FINAL:
                errors = "; ".join(f"{j.model}: {j.error}" for j in status.jobs if j.error)
                raise RequestFailed(
                    f"request {request_id} is {status.status} without the {tier} tier"
                    + (f" ({status.error or errors})" if status.error or errors else ""),
                    status=status,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(
                    f"request {request_id} did not reach the {tier} tier within {timeout:g}s "
                    f"(status {status.status}, guarantee {status.guarantee})",
                    status=status,
                )
            yield Pause(min(delay, remaining))
            delay = min(delay * factor, max_interval)

    def receipt(
        self, request_id: str, *, verify: bool, key: ReceiptKey | str | bytes | None
    ) -> Op[SignedReceipt]:
        path = f"/requests/{_segment(request_id)}/receipt"
        response = yield from self.exchange(Call("GET", path))
        raw = expect(response, 200).content
        try:
            signed = SignedReceipt.parse(raw)
        except ValueError as exc:
            raise LetheError(f"the receipt of {request_id} is not a signed receipt ({exc})") from None
        if not verify:
            return signed
        if key is None:
            key = yield from self.receipt_key()
        verify_receipt(raw, key)
        key_id = key.key_id if isinstance(key, ReceiptKey) else signed.signature.key_id
        return SignedReceipt(
            raw=raw, receipt=signed.receipt, signature=signed.signature, verified_with=key_id
        )

    def receipt_key(self) -> Op[ReceiptKey]:
        data = yield from self.get_json("/receipt-key")
        return ReceiptKey.model_validate(data)

    # -- registry ---------------------------------------------------------------------------

    def list_models(self) -> Op[list[ModelSummary]]:
        data = yield from self.get_json("/models")
        return [ModelSummary.model_validate(m) for m in data]

    def import_run(self, *, name: str, run_id: str, dataset: str, unlearn_method: str | None) -> Op[ModelInfo]:
        body: dict[str, Any] = {"name": name, "run_id": run_id, "dataset": dataset}
        if unlearn_method:
            body["unlearn_method"] = unlearn_method
        # not idempotent: a repeat after a lost answer is a 409 naming the model
        response = yield from self.exchange(Call("POST", "/models/import", json=body), idempotent=False)
        return ModelInfo.model_validate(json_of(expect(response, 201)))

    def get_model(self, name: str) -> Op[ModelInfo]:
        data = yield from self.get_json(f"/models/{_segment(name)}")
        return ModelInfo.model_validate(data)

    def list_versions(self, name: str) -> Op[list[Version]]:
        data = yield from self.get_json(f"/models/{_segment(name)}/versions")
        return [Version.model_validate(v) for v in data]

    def get_version(self, name: str, version: int | str) -> Op[Version]:
        path = f"/models/{_segment(name)}/versions/{version_ref(version)}"
        data = yield from self.get_json(path)
        return Version.model_validate(data)

    def report(self, name: str, version: int | str, *, format: str) -> Op[Report]:
        if format not in ("html", "pdf"):
            raise ValueError(f"a report is html or pdf, not {format!r}")
        path = f"/models/{_segment(name)}/versions/{version_ref(version)}/report"
        call = Call("GET", path, params={"format": format}, headers={"Accept": "*/*"})
        response = yield from self.exchange(call)
        expect(response, 200)
        ref = version_ref(version)
        return Report(
            model=name,
            version=_header_int(response, "x-lethe-version", int(ref) if ref != LATEST else -1),
            format="pdf" if format == "pdf" else "html",
            content=response.content,
            media_type=response.headers.get("content-type", ""),
            sha256=response.headers.get("x-content-sha256"),
            headers=dict(response.headers),
        )

    def pull(
        self,
        name: str,
        version: int | str,
        *,
        out: str | Path | None,
        cache_dir: str | Path | None,
        use_cache: bool,
    ) -> Op[PulledWeights]:
        """GET the weights (conditional on the cached copy), verify the sha256 against the
        ETag and the version's ``weights_sha256``, keep them in the cache, copy to ``out``."""
        ref = version_ref(version)
        if not use_cache and out is None:
            raise ValueError("without the cache, give out= (where to write the weights)")
        root = Path(cache_dir).expanduser() if cache_dir else self.config.cache_dir
        cache = WeightsCache(root, self.config.base_url)
        cached_path: Path | None = None
        repaired = False
        cached = cache.lookup(name, ref) if use_cache else None
        if cached is not None:
            cached_path, repaired = cache.verified_blob(cached.sha256)
            if cached_path is None:
                cache.forget(name, ref)
        headers = {"Accept": "application/octet-stream"}
        if cached is not None and cached_path is not None:
            headers["If-None-Match"] = f'"{cached.sha256}"'
        if use_cache:
            download = cache.start_download()
        else:  # straight to out: the temporary file beside it
            download = Download(Path(out or ".").expanduser().resolve().parent)
        path = f"/models/{_segment(name)}/versions/{ref}/weights"
        try:
            response = yield from self.exchange(Call("GET", path, headers=headers, download=download))
            if response.status_code == 304 and cached is not None and cached_path is not None:
                download.discard()
                number = _header_int(response, "x-lethe-version", cached.version)
                cache.remember(name, ref, number, cached.sha256)
                target = cached_path if out is None else copy_out(cached_path, Path(out).expanduser())
                return PulledWeights(
                    model=name, version=number, sha256=cached.sha256,
                    size=cached_path.stat().st_size, path=target, downloaded=False,
                    bytes_downloaded=0, http_status=304, cache_repaired=repaired,
                )
            expect(response, 200)
            number = _header_int(response, "x-lethe-version", None)
            etag = (response.headers.get("etag") or "").removeprefix("W/").strip('"')
            announced = response.headers.get("content-length")
            if announced is not None and announced.isdigit() and int(announced) != download.size:
                raise IntegrityError(
                    f"{name} v{number}: received {download.size} bytes of the {announced} announced"
                )
            if etag and download.sha256 != etag:
                raise IntegrityError(
                    f"{name} v{number}: the downloaded weights hash to {download.sha256}, "
                    f"not to their ETag {etag}"
                )
            # The version's own record, by number (what `latest` meant for this download).
            meta = yield from self.get_version(name, number if number is not None else ref)
            if download.sha256 != meta.weights_sha256:
                raise IntegrityError(
                    f"{name} v{meta.number}: the downloaded weights hash to {download.sha256}, "
                    f"not to the version's weights_sha256 {meta.weights_sha256}"
                )
            size = download.size
            if use_cache:
                blob = download.move_to(cache.blob_path(meta.weights_sha256))
                cache.remember(name, ref, meta.number, meta.weights_sha256)
                if ref != str(meta.number):
                    cache.remember(name, str(meta.number), meta.number, meta.weights_sha256)
                target = blob if out is None else copy_out(blob, Path(out).expanduser())
            else:
                assert out is not None
                target = download.move_to(Path(out).expanduser())
            return PulledWeights(
                model=name, version=meta.number, sha256=meta.weights_sha256, size=size,
                path=target, downloaded=True, bytes_downloaded=size, http_status=200,
                cache_repaired=repaired,
            )
        finally:
            download.discard()  # a no-op once moved into place


def _header_int(response: httpx.Response, name: str, default: int | None) -> Any:
    value = response.headers.get(name, "")
    return int(value) if value.isascii() and value.isdigit() else default
