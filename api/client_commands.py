"""``lethe request`` and ``lethe pull``: the service's HTTP API from the command line, on
top of :mod:`lethe_client` (the same client a Python program uses).

Both talk to ``--url`` (``LETHE_URL``, default ``http://127.0.0.1:8000``) with ``--api-key``
(``LETHE_API_KEY``). A problem is one line ``error: ...`` on stderr naming it (the HTTP
status and the server's message, or what failed on this side) and exit status 2; a wait
that runs out of time exits 3.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from lethe_client import Client, LetheError

#: Exit statuses: bad input or an error answer, and a --wait that timed out.
EXIT_ERROR = 2
EXIT_TIMEOUT = 3


class WaitTier(str, Enum):
    approximate = "approximate"
    exact = "exact"


UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="LETHE_URL", help="The Lethe server (default: http://127.0.0.1:8000)."),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="LETHE_API_KEY", help="API key (requester scope to file, registry to pull).",
                 show_envvar=True),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


def _require_client() -> None:
    """A clear error, not a traceback, where the installed package predates lethe_client."""
    from importlib.util import find_spec

    if find_spec("lethe_client") is None:
        _fail("the lethe_client package is not installed; reinstall lethe (pip install -e . in a checkout)")


def _client(url: str | None, api_key: str | None, timeout: float) -> Client:
    from lethe_client import Client

    try:
        return Client(url, api_key, timeout=timeout)
    except ValueError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def _explain(exc: LetheError) -> str:
    from lethe_client import Gone, Unauthorized

    message = str(exc)
    if isinstance(exc, Unauthorized):
        message += " (give --api-key or set LETHE_API_KEY)"
    if isinstance(exc, Gone) and exc.successor is not None:
        message += f" [successor: version {exc.successor}]"
    return message


def _emit(result: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


def request(
    subject: Annotated[str | None, typer.Option("--subject", help="Data-subject id whose samples to erase.")] = None,
    sample: Annotated[
        list[str] | None, typer.Option("--sample", help="A sample id to erase; repeat for several.")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Target model; repeat for several (default: every model that trained on them)."),
    ] = None,
    method: Annotated[str | None, typer.Option(help="Unlearning method instead of each model's default.")] = None,
    wait: Annotated[
        WaitTier | None,
        typer.Option("--wait", help="Wait until the request answers this tier (approximate: completed; "
                     "exact: every model exact)."),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds --wait waits before exit status 3.")] = 600.0,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Send this Idempotency-Key (default: a new one, printed): "
                     "the same key and body return the same request."),
    ] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """File an erasure request (and, with --wait, wait for a tier).

    Prints the request's id, status and Idempotency-Key; with --wait, the tier reached and
    the version answering it on each model."""
    if not subject and not sample:
        raise typer.BadParameter("name what to erase: --subject and/or --sample", param_hint="--subject")
    _require_client()
    from lethe_client import LetheError, RequestFailed, WaitTimeout

    with _client(url, api_key, timeout=30.0) as client:
        try:
            filed = client.request_erasure(
                subject, sample_ids=sample or None, models=model or None, method=method,
                idempotency_key=idempotency_key,
            )
        except LetheError as exc:
            _fail(_explain(exc))
        result: dict[str, Any] = {
            "id": filed.id, "status": filed.status, "idempotency_key": filed.idempotency_key,
            "replayed": filed.replayed, "due_at": filed.due_at.isoformat(), "status_url": filed.status_url,
        }
        lines = [
            f"request {filed.id} {filed.status}" + (" (replayed: filed before with this key)" if filed.replayed else ""),
            f"  idempotency key: {filed.idempotency_key}",
            f"  due: {filed.due_at.isoformat()}",
        ]
        if wait is not None:
            try:
                status = client.wait(filed.id, wait.value, timeout=timeout)
            except WaitTimeout as exc:
                _emit(result, as_json, lines)
                _fail(_explain(exc), EXIT_TIMEOUT)
            except RequestFailed as exc:
                _emit(result, as_json, lines)
                _fail(_explain(exc))
            except LetheError as exc:
                _fail(_explain(exc))
            result.update(
                status=status.status, exact=status.exact, guarantee=status.guarantee,
                jobs=[
                    {"model": j.model, "status": j.status, "guarantee": j.guarantee,
                     "approximate_version": j.approximate_version, "exact_version": j.exact_version,
                     "version": j.version.number if j.version else None}
                    for j in status.jobs
                ],
            )
            lines[0] = f"request {filed.id} {status.status}, {status.guarantee}"
            for j in status.jobs:
                version = f"v{j.version.number}" if j.version else "no version"
                lines.append(f"  {j.model}: {j.status}, {j.guarantee}, {version}")
    _emit(result, as_json, lines)


def pull(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name.", show_default=False)],
    version: Annotated[str, typer.Option("--version", help="A version number or latest.")] = "latest",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the weights here (default: only the cache; its path is printed).")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="The weights cache (default: LETHE_CACHE_DIR, else ~/.cache/lethe)."),
    ] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Download a version's weights, sha256-verified, through the cache.

    The weights (safetensors) are checked against the version's weights_sha256 and kept in
    the cache: pulling an unchanged version again is a 304 with no download. A withdrawn
    version exits 2 naming its successor."""
    _require_client()
    from lethe_client import LetheError
    from lethe_client._core import version_ref

    try:
        ref = version_ref(version)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--version") from None
    with _client(url, api_key, timeout=60.0) as client:
        try:
            got = client.pull(model, ref, out=out, cache_dir=cache_dir)
        except LetheError as exc:
            _fail(_explain(exc))
        except OSError as exc:
            _fail(f"cannot write the weights: {exc}")
    how = (f"downloaded {got.bytes_downloaded} bytes" if got.downloaded
           else "not modified (304), from the cache")
    if got.cache_repaired:
        how += "; the cached copy was corrupt and was replaced"
    _emit(
        {"model": got.model, "version": got.version, "sha256": got.sha256, "size": got.size,
         "path": str(got.path), "downloaded": got.downloaded, "bytes_downloaded": got.bytes_downloaded,
         "http_status": got.http_status, "cache_repaired": got.cache_repaired},
        as_json,
        [f"{got.model} v{got.version} -> {got.path}", f"  sha256 {got.sha256} (verified), {how}"],
    )


def register(app: typer.Typer) -> None:
    """Add ``request`` and ``pull`` to the ``lethe`` app."""
    app.command("request")(request)
    app.command("pull")(pull)
