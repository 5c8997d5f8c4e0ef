"""``Client`` (blocking) and ``AsyncClient`` (``async``/``await``): the same operations,
the same arguments, the same results and errors.

Both are thin: each method hands an operation of :mod:`lethe_client._core` to its driver,
which performs the HTTP exchanges and sleeps the operation asks for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import anyio
import httpx

from lethe_client._core import LATEST, Call, Config, Op, Operations, Pause, Retry
from lethe_client.models import (
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
)

T = TypeVar("T")

#: Seconds: the default of ``timeout`` (each HTTP exchange) and of :meth:`Client.wait`.
DEFAULT_TIMEOUT = 30.0
DEFAULT_WAIT = 600.0


class _Base:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        cache_dir: str | Path | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.config = Config.make(
            base_url, api_key, timeout=timeout, retry=retry, cache_dir=cache_dir, headers=headers
        )
        self._ops = Operations(self.config)

    @property
    def base_url(self) -> str:
        return self.config.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.base_url!r})"


class Client(_Base):
    """A blocking client of a Lethe server.

    ``base_url`` defaults to ``LETHE_URL`` (else ``http://127.0.0.1:8000``), ``api_key`` to
    ``LETHE_API_KEY``; ``timeout`` bounds each HTTP exchange (seconds); ``retry`` says how
    failed connections and 502/503/504 answers are retried (:class:`Retry`); ``cache_dir``
    is where :meth:`pull` keeps weights (``LETHE_CACHE_DIR``, else ``~/.cache/lethe``).
    ``transport`` and ``event_hooks`` go to the underlying ``httpx.Client``.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        cache_dir: str | Path | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        event_hooks: Mapping[str, list[Any]] | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, retry=retry, cache_dir=cache_dir, headers=headers)
        self._http = httpx.Client(
            **self.config.http_options(), transport=transport, event_hooks=dict(event_hooks or {})
        )

    # -- driver ---------------------------------------------------------------------------

    def _run(self, op: Op[T]) -> T:
        try:
            effect = next(op)
            while True:
                try:
                    outcome = self._perform(effect)
                except httpx.TransportError as exc:
                    effect = op.throw(exc)
                else:
                    effect = op.send(outcome)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            op.close()

    def _perform(self, effect: Call | Pause) -> httpx.Response | None:
        if isinstance(effect, Pause):
            time.sleep(effect.seconds)
            return None
        request = self._http.build_request(
            effect.method, effect.path, params=effect.params, headers=effect.headers, json=effect.json
        )
        response = self._http.send(request, stream=effect.download is not None)
        if effect.download is None:
            return response
        try:
            if response.status_code == 200:
                for chunk in response.iter_bytes():
                    effect.download.write(chunk)
            else:
                response.read()
        finally:
            response.close()
        return response

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- erasure requests -------------------------------------------------------------------

    def request_erasure(
        self,
        subject_id: str | None = None,
        *,
        sample_ids: Sequence[str] | None = None,
        models: Sequence[str] | None = None,
        method: str | None = None,
        method_options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """File an erasure request (``POST /erasure-requests``, scope requester) for a data
        subject and/or sample ids, on ``models`` (default: every model that trained on
        them). It is sent with ``idempotency_key``, or a new one the answer carries
        (``Accepted.idempotency_key``): filing again with it returns the same request
        (``replayed``), so a filing is safe to repeat after a lost answer."""
        return self._run(self._ops.request_erasure(
            subject_id=subject_id, sample_ids=sample_ids, models=models, method=method,
            method_options=method_options, idempotency_key=idempotency_key,
        ))

    def status(self, request_id: str) -> RequestStatus:
        """``GET /requests/{id}/status``: state, jobs, tiers."""
        return self._run(self._ops.status(request_id))

    def wait(
        self,
        request_id: str,
        tier: Tier = "approximate",
        *,
        timeout: float = DEFAULT_WAIT,
        interval: float = 1.0,
        max_interval: float = 15.0,
    ) -> RequestStatus:
        """Poll the request's status until it answers ``tier`` (``approximate``: completed;
        ``exact``: completed and every job exact), starting every ``interval`` seconds and
        backing off by half each time up to ``max_interval``. Raises
        :class:`~lethe_client.RequestFailed` when it ends failed, denied or cancelled, and
        :class:`~lethe_client.WaitTimeout` after ``timeout`` seconds."""
        return self._run(self._ops.wait(
            request_id, tier=tier, timeout=timeout, interval=interval, max_interval=max_interval
        ))

    def receipt(
        self, request_id: str, *, verify: bool = False, key: ReceiptKey | str | bytes | None = None
    ) -> SignedReceipt:
        """The request's signed receipt (``GET /requests/{id}/receipt``), byte for byte.
        ``verify=True`` checks its signature offline with ``key`` (kept from an earlier
        :meth:`receipt_key`, PEM or base64), else with the key the server publishes now;
        :class:`~lethe_client.ReceiptInvalid` when it fails."""
        return self._run(self._ops.receipt(request_id, verify=verify, key=key))

    def receipt_key(self) -> ReceiptKey:
        """``GET /receipt-key``: the public key that verifies receipts (no API key needed)."""
        return self._run(self._ops.receipt_key())

    # -- registry ---------------------------------------------------------------------------

    def list_models(self) -> list[ModelSummary]:
        """``GET /models`` (scope registry)."""
        return self._run(self._ops.list_models())

    def get_model(self, name: str) -> ModelInfo:
        """``GET /models/{name}``."""
        return self._run(self._ops.get_model(name))

    def import_run(self, name: str, run_id: str, dataset: str, *, unlearn_method: str | None = None) -> ModelInfo:
        """``POST /models/import`` (scope admin): register a run recorded with
        ``record_training`` in your tenant's store as model ``name``; the service verifies
        it first (a :class:`ValidationFailed` names the first problem)."""
        return self._run(self._ops.import_run(name=name, run_id=run_id, dataset=dataset, unlearn_method=unlearn_method))

    def list_versions(self, name: str) -> list[Version]:
        """``GET /models/{name}/versions``, oldest first, withdrawn ones included."""
        return self._run(self._ops.list_versions(name))

    def get_version(self, name: str, version: int | str = LATEST) -> Version:
        """``GET /models/{name}/versions/{v}`` (a number or ``latest``)."""
        return self._run(self._ops.get_version(name, version))

    def pull(
        self,
        name: str,
        version: int | str = LATEST,
        *,
        out: str | Path | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> PulledWeights:
        """Download a version's safetensors weights, verified against the version's
        ``weights_sha256``, through the on-disk cache: a version already cached is asked
        for with ``If-None-Match`` and, unchanged, answered 304 without a body. The file is
        ``out`` when given (copied from the cache), else the cached file. A withdrawn
        version raises :class:`~lethe_client.Gone` with its ``successor``."""
        return self._run(self._ops.pull(name, version, out=out, cache_dir=cache_dir, use_cache=use_cache))

    def report(self, name: str, version: int | str = LATEST, *, format: Literal["html", "pdf"] = "html") -> Report:
        """The version's erasure report, HTML or PDF (404 for version 0)."""
        return self._run(self._ops.report(name, version, format=format))


class AsyncClient(_Base):
    """The ``async`` twin of :class:`Client`: the same methods (awaited), arguments,
    results and errors. ``transport`` and ``event_hooks`` go to ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        cache_dir: str | Path | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        event_hooks: Mapping[str, list[Any]] | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, retry=retry, cache_dir=cache_dir, headers=headers)
        self._http = httpx.AsyncClient(
            **self.config.http_options(), transport=transport, event_hooks=dict(event_hooks or {})
        )

    # -- driver ---------------------------------------------------------------------------

    async def _run(self, op: Op[T]) -> T:
        try:
            effect = next(op)
            while True:
                try:
                    outcome = await self._perform(effect)
                except httpx.TransportError as exc:
                    effect = op.throw(exc)
                else:
                    effect = op.send(outcome)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            op.close()

    async def _perform(self, effect: Call | Pause) -> httpx.Response | None:
        if isinstance(effect, Pause):
            await anyio.sleep(effect.seconds)
            return None
        request = self._http.build_request(
            effect.method, effect.path, params=effect.params, headers=effect.headers, json=effect.json
        )
        response = await self._http.send(request, stream=effect.download is not None)
        if effect.download is None:
            return response
        try:
            if response.status_code == 200:
                async for chunk in response.aiter_bytes():
                    effect.download.write(chunk)
            else:
                await response.aread()
        finally:
            await response.aclose()
        return response

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the operations of Client, awaited ---------------------------------------------------

    async def request_erasure(
        self,
        subject_id: str | None = None,
        *,
        sample_ids: Sequence[str] | None = None,
        models: Sequence[str] | None = None,
        method: str | None = None,
        method_options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """See :meth:`Client.request_erasure`."""
        return await self._run(self._ops.request_erasure(
            subject_id=subject_id, sample_ids=sample_ids, models=models, method=method,
            method_options=method_options, idempotency_key=idempotency_key,
        ))

    async def status(self, request_id: str) -> RequestStatus:
        """See :meth:`Client.status`."""
        return await self._run(self._ops.status(request_id))

    async def wait(
        self,
        request_id: str,
        tier: Tier = "approximate",
        *,
        timeout: float = DEFAULT_WAIT,
        interval: float = 1.0,
        max_interval: float = 15.0,
    ) -> RequestStatus:
        """See :meth:`Client.wait`."""
        return await self._run(self._ops.wait(
            request_id, tier=tier, timeout=timeout, interval=interval, max_interval=max_interval
        ))

    async def receipt(
        self, request_id: str, *, verify: bool = False, key: ReceiptKey | str | bytes | None = None
    ) -> SignedReceipt:
        """See :meth:`Client.receipt`."""
        return await self._run(self._ops.receipt(request_id, verify=verify, key=key))

    async def receipt_key(self) -> ReceiptKey:
        """See :meth:`Client.receipt_key`."""
        return await self._run(self._ops.receipt_key())

    async def list_models(self) -> list[ModelSummary]:
        """See :meth:`Client.list_models`."""
        return await self._run(self._ops.list_models())

    async def get_model(self, name: str) -> ModelInfo:
        """See :meth:`Client.get_model`."""
        return await self._run(self._ops.get_model(name))

    async def import_run(self, name: str, run_id: str, dataset: str, *, unlearn_method: str | None = None) -> ModelInfo:
        """See :meth:`Client.import_run`."""
        return await self._run(self._ops.import_run(name=name, run_id=run_id, dataset=dataset, unlearn_method=unlearn_method))

    async def list_versions(self, name: str) -> list[Version]:
        """See :meth:`Client.list_versions`."""
        return await self._run(self._ops.list_versions(name))

    async def get_version(self, name: str, version: int | str = LATEST) -> Version:
        """See :meth:`Client.get_version`."""
        return await self._run(self._ops.get_version(name, version))

    async def pull(
        self,
        name: str,
        version: int | str = LATEST,
        *,
        out: str | Path | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> PulledWeights:
        """See :meth:`Client.pull` (file writes and hashing run in the event loop's thread)."""
        return await self._run(self._ops.pull(name, version, out=out, cache_dir=cache_dir, use_cache=use_cache))

    async def report(
        self, name: str, version: int | str = LATEST, *, format: Literal["html", "pdf"] = "html"
    ) -> Report:
        """See :meth:`Client.report`."""
        return await self._run(self._ops.report(name, version, format=format))
