"""Security properties, table-driven where a table says it best.

- the authorization matrix: EVERY route of ``app.routes`` with every kind of caller (no key,
  a bad key, each scope, another tenant's key); a route without an entry fails the suite;
- tenant isolation of requests and keys that never appear in clear in the database;
- request bodies are size-limited without reading past the limit (chunked bodies too);
- no pickle anywhere: no ``import pickle``, ``torch.load`` without ``weights_only=True`` or
  ``np.load(..., allow_pickle=True)`` in the tree (a grep test);
- secrets only from the environment: no secret defaults beyond the documented dev ones;
- the audit chain reports an edited or deleted event of a real request's trail.

Already covered elsewhere (not repeated here): keys hashed at creation
(tests/test_service_core.py), tampered blobs and sidecars (tests/test_store.py), replaced
weights refused by the version's sha256 (tests/test_registry_api.py).
"""

from __future__ import annotations

import ast
import io
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, text

from api.audit.service import verify
from api.main import create_app
from tests.conftest import bearer
from tests.reliability_world import (
    ONLY_ACME_SUBJECT,
    OTHER_DATASET,
    OTHER_MODEL,
    SUBJECT,
    World,
    build_world,
    train_world_runs,
)

ROOT = Path(__file__).resolve().parents[1]
#: acme's keys and globex's (``other_*``; ``other_tenant`` is globex's requester). acme's
#: admin comes last, so another tenant's try at a state-changing route comes first.
CALLERS = ("none", "bad", "requester", "registry", "other_tenant", "other_registry", "other_admin", "admin")
BAD_KEY = "lethe_this-key-was-never-issued-000000000000"


# ---------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def world_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_world_runs(tmp_path_factory.mktemp("security-runs"))


@pytest.fixture
def world(service_env: str, db_session, world_runs: Path) -> World:  # type: ignore[no-untyped-def]
    return build_world(db_session, world_runs)


def headers_of(world: World, caller: str) -> dict[str, str]:
    if caller == "none":
        return {}
    if caller == "bad":
        return bearer(BAD_KEY)
    return bearer(world.keys[caller])


# ---------------------------------------------------------------------------------------
# Routes of the app
# ---------------------------------------------------------------------------------------


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route, through included routers and mounts.

    FastAPI >= 0.16x keeps included routers as one lazy entry (``original_router``) in
    ``app.routes``; Starlette adds HEAD to every plain GET route (left out: not a route of
    ours). A mount without routes (static files) counts as ``GET <path>/{path}``.
    """
    from fastapi.routing import APIRoute
    from starlette.routing import Mount

    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif isinstance(route, Mount):
                if route.routes:
                    walk(route.routes, prefix + route.path)
                else:
                    found.add(("GET", prefix + route.path + "/{path}"))
            elif hasattr(route, "path"):
                methods = set(route.methods or {"GET"})
                if not isinstance(route, APIRoute) and "GET" in methods:
                    methods.discard("HEAD")
                found.update((m, prefix + route.path) for m in methods)

    walk(list(app.routes), "")
    return found


# ---------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------

PUBLIC = {c: 200 for c in CALLERS}
LOGIN = {c: 303 for c in CALLERS}  # a redirect to /dashboard/login


def scoped(
    requester: int = 403,
    registry: int = 403,
    admin: int = 403,
    other_tenant: int | None = None,
    other_registry: int | None = None,
    other_admin: int | None = None,
) -> dict[str, int]:
    """Expected status per caller of a route that needs a key (401 without a valid one);
    globex's keys expect what acme's of the same scope get unless told otherwise."""
    return {
        "none": 401,
        "bad": 401,
        "requester": requester,
        "registry": registry,
        "admin": admin,
        "other_tenant": requester if other_tenant is None else other_tenant,
        "other_registry": registry if other_registry is None else other_registry,
        "other_admin": admin if other_admin is None else other_admin,
    }


def acme_only(requester: int = 403, registry: int = 403, admin: int = 403) -> dict[str, int]:
    """A route naming one of acme's resources: globex's keys that pass the scope check get
    the 404 of a resource that does not exist (a key lacking the scope still gets 403,
    which says nothing about the resource)."""
    return scoped(
        requester, registry, admin,
        other_tenant=404 if requester != 403 else 403,
        other_registry=404 if registry != 403 else 403,
        other_admin=404,
    )


def upload_body() -> dict[str, Any]:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(
        buf,
        images=rng.integers(0, 256, size=(20, 8, 8), dtype=np.uint8),
        labels=np.arange(20, dtype=np.int64) % 2,
        sample_ids=np.array([f"u-{i}" for i in range(20)]),
    )
    return {"files": {"file": ("m.npz", buf.getvalue(), "application/octet-stream")}}


@dataclass(frozen=True)
class Row:
    expect: dict[str, int]
    #: request arguments for httpx (json, files, data), built per caller (names must differ)
    body: Callable[[str, World], dict[str, Any]] = field(default=lambda caller, world: {})


MODEL_BODY = {"dataset": "digits-subjects", "architecture": "mlp", "method": "plain", "epochs": 1}

#: (method, path template) -> expected status per caller. Paths are filled from the world:
#: {request_id} is a queued request of tenant acme, {name} the ready model (or dataset).
#: Order matters for the state-changing admin actions: cancel comes last.
MATRIX: dict[tuple[str, str], Row] = {
    ("GET", "/openapi.json"): Row(PUBLIC),
    ("GET", "/docs"): Row(PUBLIC),
    ("GET", "/docs/oauth2-redirect"): Row(PUBLIC),
    ("GET", "/redoc"): Row(PUBLIC),
    ("GET", "/healthz"): Row(PUBLIC),
    ("GET", "/readyz"): Row(PUBLIC),
    # globex has a model on digits of its own: its keys file against it
    ("POST", "/erasure-requests"): Row(
        scoped(requester=202, admin=202), lambda c, w: {"json": {"subject_id": SUBJECT}}
    ),
    ("GET", "/requests/{request_id}/status"): Row(acme_only(requester=200, admin=200)),
    ("GET", "/requests/{request_id}/receipt"): Row(acme_only(requester=200, admin=200)),
    ("GET", "/receipt-key"): Row(PUBLIC),
    ("GET", "/admin/requests"): Row(scoped(admin=200)),
    ("GET", "/admin/requests/stats"): Row(scoped(admin=200)),
    ("GET", "/admin/requests/{request_id}"): Row(acme_only(admin=200)),
    ("GET", "/admin/requests/{request_id}/audit"): Row(acme_only(admin=200)),
    # a queued request can be neither approved, denied nor retried: 409 once authorized
    ("POST", "/admin/requests/{request_id}/approve"): Row(acme_only(admin=409)),
    ("POST", "/admin/requests/{request_id}/deny"): Row(acme_only(admin=409)),
    ("POST", "/admin/requests/{request_id}/retry"): Row(acme_only(admin=409)),
    ("POST", "/admin/requests/{request_id}/cancel"): Row(acme_only(admin=200)),
    ("GET", "/admin/audit/verify"): Row(scoped(admin=200)),
    ("GET", "/admin/residuals"): Row(scoped(admin=200)),
    ("GET", "/models"): Row(scoped(registry=200, admin=200)),
    # acme's dataset does not exist for globex: its admin's POST names an unknown dataset
    ("POST", "/models"): Row(
        scoped(admin=202, other_admin=422), lambda c, w: {"json": {**MODEL_BODY, "name": f"m-{c}"}}
    ),
    # no such run in the tenant's store: past the scope check, the 422 names it
    ("POST", "/models/import"): Row(
        scoped(admin=422), lambda c, w: {"json": {"name": f"i-{c}", "run_id": "no-such-run", "dataset": w.dataset}}
    ),
    ("GET", "/models/{name}"): Row(acme_only(registry=200, admin=200)),
    ("GET", "/models/{name}/versions"): Row(acme_only(registry=200, admin=200)),
    ("GET", "/models/{name}/versions/{version}"): Row(acme_only(registry=200, admin=200)),
    ("GET", "/models/{name}/versions/{version}/weights"): Row(acme_only(registry=200, admin=200)),
    ("HEAD", "/models/{name}/versions/{version}/weights"): Row(acme_only(registry=200, admin=200)),
    ("GET", "/models/{name}/health"): Row(acme_only(registry=200, admin=200)),
    ("PATCH", "/models/{name}/policy"): Row(
        acme_only(admin=200), lambda c, w: {"json": {"compact_after_requests": 50}}
    ),
    ("POST", "/models/{name}/compact"): Row(acme_only(admin=202)),
    ("GET", "/datasets"): Row(scoped(admin=200)),
    ("POST", "/datasets"): Row(
        scoped(admin=201), lambda c, w: {"json": {"name": f"d-{c}", "source": "digits", "subject_size": 10}}
    ),
    ("POST", "/datasets/upload"): Row(scoped(admin=201), lambda c, w: {**upload_body(), "data": {"name": f"u-{c}"}}),
    ("GET", "/datasets/{name}"): Row(acme_only(admin=200)),
    ("GET", "/metrics"): Row(scoped(admin=200)),
    # webhooks: {webhook_id} is acme's (the world's webhook 1)
    ("POST", "/webhooks"): Row(scoped(admin=201), lambda c, w: {"json": {"url": f"http://127.0.0.1:9/{c}"}}),
    ("GET", "/webhooks"): Row(scoped(admin=200)),
    ("GET", "/webhooks/{webhook_id}/deliveries"): Row(acme_only(admin=200)),
    ("DELETE", "/webhooks/{webhook_id}"): Row(acme_only(admin=204)),
    # version 0 has no erasure report: past the scope check, the 404 says so
    ("GET", "/models/{name}/versions/{version}/report"): Row(acme_only(registry=404, admin=404)),
    # The dashboard authenticates by a session cookie that only an admin key's login opens;
    # a bearer header opens nothing there: every page sends the caller to the login form.
    ("GET", "/dashboard"): Row({c: 303 for c in CALLERS}),
    ("GET", "/dashboard/login"): Row(PUBLIC),
    ("POST", "/dashboard/login"): Row(
        {**{c: 401 for c in CALLERS}, "admin": 303, "other_admin": 303},
        lambda c, w: {"data": {"api_key": w.keys.get(c, BAD_KEY if c == "bad" else "")}},
    ),
    ("POST", "/dashboard/logout"): Row({c: 303 for c in CALLERS}),
    ("GET", "/dashboard/requests"): Row(LOGIN),
    ("GET", "/dashboard/requests/rows"): Row(LOGIN),
    ("GET", "/dashboard/requests/{request_id}"): Row(LOGIN),
    ("GET", "/dashboard/requests/{request_id}/live"): Row(LOGIN),
    ("GET", "/dashboard/models"): Row(LOGIN),
    ("GET", "/dashboard/models/{name}"): Row(LOGIN),
    ("GET", "/dashboard/models/{name}/versions/{number}/report"): Row(LOGIN),
    ("GET", "/dashboard/audit"): Row(LOGIN),
    ("GET", "/dashboard/static/{path}"): Row(PUBLIC),
}


def fill(template: str, world: World) -> str:
    name = world.dataset if template.startswith("/datasets") else world.model
    return template.format(
        request_id=world.request_id, name=name, version=world.version, number=world.version, path="dashboard.css",
        webhook_id=world.webhook_id,
    )


def test_every_route_has_a_matrix_entry() -> None:
    routes = app_routes(create_app())
    missing = sorted(routes - MATRIX.keys())
    stale = sorted(MATRIX.keys() - routes)
    assert not missing, (
        "routes without an entry in the authorization matrix (tests/test_security.py MATRIX): "
        + ", ".join(f"{m} {p}" for m, p in missing)
    )
    assert not stale, "matrix entries for routes that no longer exist: " + ", ".join(f"{m} {p}" for m, p in stale)


@pytest.fixture
async def client(world: World) -> AsyncIterator[Any]:
    import httpx

    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lethe.test") as c:
        yield c


@pytest.mark.anyio
async def test_authorization_matrix(client, world: World) -> None:  # type: ignore[no-untyped-def]
    wrong: list[str] = []
    for (method, template), row in MATRIX.items():
        path = fill(template, world)
        for caller in CALLERS:
            resp = await client.request(method, path, headers=headers_of(world, caller), **row.body(caller, world))
            want = row.expect[caller]
            if resp.status_code != want:
                wrong.append(f"{method} {path} as {caller}: {resp.status_code} (want {want}) {resp.text[:120]}")
            elif row.expect is LOGIN and not resp.headers.get("location", "").startswith("/dashboard/login"):
                wrong.append(f"{method} {path} as {caller}: redirected to {resp.headers.get('location')}")
            elif want >= 400 and method != "HEAD" and not path.startswith("/dashboard"):
                detail = resp.json().get("detail")
                if not (isinstance(detail, str) and detail):
                    wrong.append(f"{method} {path} as {caller}: no readable detail: {resp.text[:120]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.anyio
async def test_tenant_isolation_of_every_request_route(client, world: World) -> None:  # type: ignore[no-untyped-def]
    """acme's admin sees none of globex's request through any route naming it, and the reverse."""
    from api.auth.service import create_key
    from api.database.core import get_sessionmaker

    with get_sessionmaker()() as db:
        globex_admin = create_key(db, name="globex-admin", scopes=["admin"], tenant="globex")[1]
        db.commit()
    for key, rid in ((world.keys["admin"], world.other_request_id), (globex_admin, world.request_id)):
        for method, template in MATRIX:
            if "{request_id}" not in template or template.startswith("/dashboard"):
                continue
            resp = await client.request(method, template.format(request_id=rid), headers=bearer(key))
            assert resp.status_code == 404 and rid in resp.json()["detail"], (method, template, resp.text)
        listing = (await client.get("/admin/requests", headers=bearer(key))).json()
        assert rid not in {item["id"] for item in listing["items"]}


@pytest.mark.anyio
async def test_listings_show_only_the_tenants_own(client, world: World) -> None:  # type: ignore[no-untyped-def]
    """Every listing of globex's admin holds globex's resources and none of acme's, and the reverse."""
    for caller, mine, theirs in (
        ("other_admin", (OTHER_MODEL, OTHER_DATASET), (world.model, world.dataset)),
        ("admin", (world.model, world.dataset), (OTHER_MODEL, OTHER_DATASET)),
    ):
        h = headers_of(world, caller)
        models = {m["name"] for m in (await client.get("/models", headers=h)).json()}
        datasets = {d["name"] for d in (await client.get("/datasets", headers=h)).json()}
        assert mine[0] in models and theirs[0] not in models, (caller, models)
        assert mine[1] in datasets and theirs[1] not in datasets, (caller, datasets)
        residuals = (await client.get("/admin/residuals", headers=h)).json()["residuals"]
        assert all(r["model"] != theirs[0] for r in residuals)
    globex_hooks = (await client.get("/webhooks", headers=headers_of(world, "other_admin"))).json()
    assert world.webhook_id not in {hook["id"] for hook in globex_hooks}


@pytest.mark.anyio
async def test_an_unknown_subject_reveals_nothing_about_other_tenants(client, world: World) -> None:  # type: ignore[no-untyped-def]
    """globex files a subject only acme's data holds and one nobody's does: the same 422."""
    answers = []
    for subject in (ONLY_ACME_SUBJECT, "subject-9999"):
        resp = await client.post(
            "/erasure-requests", json={"subject_id": subject}, headers=headers_of(world, "other_tenant")
        )
        assert resp.status_code == 422, resp.text
        answers.append(resp.json()["detail"].replace(subject, "<subject>"))
    assert answers[0] == answers[1] and world.model not in answers[0], answers
    # acme's own request for it is accepted: the subject does exist, in acme's data only
    resp = await client.post("/erasure-requests", json={"subject_id": ONLY_ACME_SUBJECT}, headers=headers_of(world, "requester"))
    assert resp.status_code == 202, resp.text
    # naming acme's model is the 404 of a model that does not exist
    resp = await client.post(
        "/erasure-requests", json={"subject_id": "subject-0001", "models": [world.model]},
        headers=headers_of(world, "other_tenant"),
    )
    assert resp.status_code == 404 and resp.json()["detail"] == f"unknown models {world.model!r}".replace("models", "model")


@pytest.mark.anyio
async def test_names_are_per_tenant(client, world: World) -> None:  # type: ignore[no-untyped-def]
    """globex may name a dataset and a model as acme did; each tenant reads its own."""
    globex = headers_of(world, "other_admin")
    resp = await client.post("/datasets", json={"name": world.dataset, "source": "digits", "subject_size": 30}, headers=globex)
    assert resp.status_code == 201, resp.text
    mine = (await client.get(f"/datasets/{world.dataset}", headers=globex)).json()
    acme = (await client.get(f"/datasets/{world.dataset}", headers=headers_of(world, "admin"))).json()
    assert (mine["subject_size"], acme["subject_size"]) == (30, 10)
    resp = await client.post("/models", json={**MODEL_BODY, "name": world.model}, headers=globex)
    assert resp.status_code == 202, resp.text
    assert (await client.get(f"/models/{world.model}", headers=globex)).json()["status"] == "training"
    assert (await client.get(f"/models/{world.model}", headers=headers_of(world, "admin"))).json()["status"] == "ready"


@pytest.mark.anyio
async def test_dashboard_pages_of_another_tenant_are_404(client, world: World) -> None:  # type: ignore[no-untyped-def]
    """globex's admin, logged in to the dashboard, finds none of acme's model, request or report."""
    login = await client.post("/dashboard/login", data={"api_key": world.keys["other_admin"]})
    assert login.status_code == 303, login.text
    for path in (
        f"/dashboard/models/{world.model}",
        f"/dashboard/models/{world.model}/versions/0/report",
        f"/dashboard/requests/{world.request_id}",
        f"/dashboard/requests/{world.request_id}/live",
    ):
        resp = await client.get(path)
        assert resp.status_code == 404, (path, resp.status_code)
    models = (await client.get("/dashboard/models")).text
    assert OTHER_MODEL in models and world.model not in models
    audit = (await client.get("/dashboard/audit")).text
    assert world.request_id not in audit and world.other_request_id in audit


def test_audit_events_name_their_tenant(world: World, db_session) -> None:  # type: ignore[no-untyped-def]
    """Each request's events carry its tenant; the chain still verifies with the new field."""
    from api.audit.models import AuditEvent

    rows = db_session.execute(
        select(AuditEvent.request_id, AuditEvent.tenant).where(AuditEvent.request_id.is_not(None))
    ).all()
    tenants = {rid: tenant for rid, tenant in rows}
    assert tenants[world.request_id] == "acme" and tenants[world.other_request_id] == "globex"
    assert verify(db_session)["ok"]
    hooks = db_session.scalars(select(AuditEvent.tenant).where(AuditEvent.kind == "webhook.registered")).all()
    assert hooks == ["acme"]


@pytest.mark.anyio
async def test_a_tenants_runs_are_written_under_its_own_prefix(client, world: World) -> None:  # type: ignore[no-untyped-def]
    """A model acme trains through the API lives under ``tenants/acme/`` of the store, and
    the workers read it back from there (weights served)."""
    import torch

    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from api.registry.flows import process_pending_training

    admin = headers_of(world, "admin")
    resp = await client.post("/models", json={**MODEL_BODY, "name": "prefixed"}, headers=admin)
    assert resp.status_code == 202, resp.text
    process_pending_training(session_factory=get_sessionmaker(), store=get_store(), device=torch.device("cpu"))
    model = (await client.get("/models/prefixed", headers=admin)).json()
    assert model["status"] == "ready", model["training"]
    assert model["training"]["store_url"].endswith("/tenants/acme"), model["training"]
    root = Path(os.environ["LETHE_BLOB_STORE"])
    run_id = model["training"]["run_id"]
    assert (root / "tenants" / "acme" / "runs" / run_id / "run.json").is_file()
    assert not (root / "runs" / run_id).exists()
    weights = await client.get("/models/prefixed/versions/0/weights", headers=admin)
    assert weights.status_code == 200 and len(weights.content) > 1000


@pytest.mark.anyio
async def test_server_paths_only_under_the_allowed_roots(  # type: ignore[no-untyped-def]
    client, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server path registers only under LETHE_DATASET_ROOTS (symlinks resolved), never
    from the upload folder (another tenant's upload included), and a refusal reads the same
    whether the path exists or not."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    manifest = upload_body()["files"]["file"][1]
    (allowed / "m.npz").write_bytes(manifest)
    (outside / "m.npz").write_bytes(manifest)
    (allowed / "escape.npz").symlink_to(outside / "m.npz")
    monkeypatch.setenv("LETHE_DATASET_ROOTS", f"{allowed}:{tmp_path / 'also-allowed'}")
    admin, globex = headers_of(world, "admin"), headers_of(world, "other_admin")

    ok = await client.post("/datasets", json={"name": "inside", "source": str(allowed / "m.npz")}, headers=admin)
    assert ok.status_code == 201, ok.text
    refusals = []
    for name, source in (
        ("outside", outside / "m.npz"), ("escape", allowed / "escape.npz"), ("dotdot", allowed / ".." / "outside" / "m.npz"),
        ("missing", outside / "nothing-here.npz"), ("etc", Path("/etc/hostname")),
    ):
        resp = await client.post("/datasets", json={"name": name, "source": str(source)}, headers=admin)
        assert resp.status_code == 403, (name, resp.text)
        refusals.append(resp.json()["detail"].replace(str(source), "<path>"))
    assert len(set(refusals)) == 1 and "LETHE_DATASET_ROOTS" in refusals[0]

    uploaded = await client.post("/datasets/upload", headers=admin, **{**upload_body(), "data": {"name": "acme-upload"}})
    assert uploaded.status_code == 201, uploaded.text
    path = uploaded.json()["source"]
    assert "/acme/" in path
    monkeypatch.setenv("LETHE_DATASET_ROOTS", str(Path(path).parents[2]))  # the uploads' parent allowed
    stolen = await client.post("/datasets", json={"name": "stolen", "source": path}, headers=globex)
    assert stolen.status_code == 403, stolen.text
    assert (await client.get("/datasets/stolen", headers=globex)).status_code == 404


@pytest.mark.anyio
async def test_keys_never_stored_in_clear(client, world: World, db_session) -> None:  # type: ignore[no-untyped-def]
    """After every kind of key has been used, no table holds a key (only its sha256)."""
    for caller in ("requester", "registry", "admin", "other_tenant"):
        await client.get("/admin/requests", headers=headers_of(world, caller))
    await client.post("/erasure-requests", json={"subject_id": SUBJECT}, headers=headers_of(world, "admin"))
    tables = db_session.execute(
        text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    ).scalars()
    dump = "".join(
        str(row) for table in tables for row in db_session.execute(text(f'SELECT * FROM "{table}"')).all()
    )
    assert len(dump) > 10_000  # the world is there (samples, requests, audit events)
    for key in world.keys.values():
        assert key not in dump and key[12:] not in dump


# ---------------------------------------------------------------------------------------
# Body size limit
# ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_chunked_body_is_refused_without_reading_past_the_limit(client, world: World, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A body without Content-Length is counted as it arrives; the server stops at the limit."""
    from api.config import get_settings

    limit = get_settings().max_body_bytes
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        chunk = b"x" * 65536
        while sent < 64 * limit:  # a client that would go on for 64 MiB
            sent += len(chunk)
            yield chunk

    for path in ("/erasure-requests", "/datasets/upload", "/models"):
        sent = 0
        resp = await client.post(
            path, content=endless(), headers={**headers_of(world, "admin"), "Content-Type": "application/json"}
        )
        assert resp.status_code == 413 and "larger than" in resp.json()["detail"], (path, resp.text)
        assert sent <= limit + 2 * 65536, (path, sent)
    # a chunked body under the limit still reaches the handler whole
    small = b'{"subject_id": "%s"}' % SUBJECT.encode()

    async def once() -> AsyncIterator[bytes]:
        yield small[:5]
        yield small[5:]

    ok = await client.post(
        "/erasure-requests", content=once(), headers={**headers_of(world, "requester"), "Content-Type": "application/json"}
    )
    assert ok.status_code == 202, ok.text


@pytest.mark.anyio
async def test_declared_oversize_upload_is_refused_and_writes_nothing(client, world: World, db_session) -> None:  # type: ignore[no-untyped-def]
    from api.config import get_settings

    before = db_session.execute(text("SELECT count(*) FROM datasets")).scalar()
    big = b"\0" * (get_settings().max_body_bytes + 1)
    resp = await client.post(
        "/datasets/upload",
        files={"file": ("big.npz", big, "application/octet-stream")},
        data={"name": "too-big"},
        headers=headers_of(world, "admin"),
    )
    assert resp.status_code == 413 and "larger than" in resp.json()["detail"]
    assert db_session.execute(text("SELECT count(*) FROM datasets")).scalar() == before


# ---------------------------------------------------------------------------------------
# No pickle, no secrets in the code
# ---------------------------------------------------------------------------------------

SCANNED = ("unlearning_core", "api", "worker", "bench", "tests", "migrations", "scripts")


def python_files() -> list[Path]:
    files = [p for d in SCANNED if (ROOT / d).exists() for p in (ROOT / d).rglob("*.py")]
    return sorted(p for p in files if not {".venv", "var", "__pycache__"} & set(p.parts))


def unsafe_loads(source: str) -> list[str]:
    """Each pickle-capable load in ``source``: pickle imports, torch.load without
    ``weights_only=True``, numpy loads with ``allow_pickle=True`` (by syntax tree, so strings
    and comments that mention them do not count)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib")]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        if name.endswith("torch.load") or name == "load" and "weights_only" in kwargs:
            weights_only = kwargs.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"line {node.lineno}: {name}(...) without weights_only=True")
        if name.split(".")[-1] in ("load", "loadtxt", "fromfile") and "allow_pickle" in kwargs:
            allow = kwargs["allow_pickle"]
            if not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"line {node.lineno}: {name}(..., allow_pickle=...) may unpickle")
        if name in ("pickle.load", "pickle.loads", "torch.serialization.load"):
            found.append(f"line {node.lineno}: {name}")
    return found


def test_the_checker_finds_what_it_looks_for() -> None:
    load = "torch." + "load"  # spelled in two parts so text greps of the tree do not flag this planted sample
    bad = (
        "import pickle\nfrom joblib import load\nimport torch, numpy as np\n"
        f"{load}('w.pt')\n{load}('w.pt', weights_only=False)\nnp.load('a.npz', allow_pickle=True)\n"
    )
    assert len(unsafe_loads(bad)) == 5
    good = "import torch, numpy as np\ntorch.load('w.pt', weights_only=True)\nnp.load('a.npz', allow_pickle=False)\nx = 'import pickle'\n"
    assert unsafe_loads(good) == []


def test_no_pickle_capable_loads_in_the_tree() -> None:
    files = python_files()
    assert len(files) > 50
    problems = [f"{p.relative_to(ROOT)} {issue}" for p in files for issue in unsafe_loads(p.read_text())]
    assert not problems, "pickle-capable loads:\n" + "\n".join(problems)


#: Secret-bearing settings and their documented development defaults (README "Configuration").
DEV_DEFAULTS = {"LETHE_S3_SECRET_KEY": "lethe-secret", "LETHE_S3_ACCESS_KEY": "lethe"}
SECRET_NAME = re.compile(r"(secret|password|token|(^|_)key$|access_key)", re.I)


def test_secrets_come_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import SecretStr

    from api.config import Settings
    from api.datasets.config import DatasetSettings
    from unlearning_core.store import S3Settings

    readme = (ROOT / "README.md").read_text()
    for cls, prefix in ((Settings, "LETHE_"), (DatasetSettings, "LETHE_"), (S3Settings, "LETHE_S3_")):
        for name, info in cls.model_fields.items():
            env = prefix + name.upper()
            if not SECRET_NAME.search(name):
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, SecretStr):
                default = default.get_secret_value()
            assert default in (None, DEV_DEFAULTS.get(env)), f"{env} has an undocumented default {default!r}"
            if default is not None:
                assert env in readme and str(default) in readme, f"{env}'s dev default is not in the README"
            monkeypatch.setenv(env, "from-the-environment-1234567890")
            value = getattr(cls(), name)
            value = value.get_secret_value() if isinstance(value, SecretStr) else value
            assert value == "from-the-environment-1234567890", env
    # no credentials in the code: private keys, cloud keys, or a key-shaped Lethe token
    pattern = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}|lethe_[A-Za-z0-9_-]{43}\b")
    hits = [str(p.relative_to(ROOT)) for p in python_files() if pattern.search(p.read_text())]
    assert not hits, f"credential-shaped strings in: {hits}"


# ---------------------------------------------------------------------------------------
# The audit chain of a real request
# ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_audit_chain_reports_an_edited_or_deleted_event(client, world: World, db_session) -> None:  # type: ignore[no-untyped-def]
    admin = headers_of(world, "admin")
    await client.post(f"/admin/requests/{world.request_id}/cancel", headers=admin, json={"reason": "test"})
    good = (await client.get("/admin/audit/verify", headers=admin)).json()
    assert good["ok"] is True and good["checked"] >= 5
    n = good["checked"]

    # the tail removed: every remaining link holds, so only the head an operator anchored
    # (verify's "head", e.g. copied to a ticket) tells; the count drops too
    db_session.execute(text("DELETE FROM audit_events WHERE seq = :n"), {"n": n})
    db_session.commit()
    cut = (await client.get("/admin/audit/verify", headers=admin)).json()
    assert cut["ok"] is True and cut["checked"] == n - 1 and cut["head"] != good["head"]

    # an erasure's evidence rewritten after the fact
    db_session.execute(
        text("UPDATE audit_events SET payload = CAST(:p AS JSON) WHERE seq = 2"), {"p": '{"reason": "forged"}'}
    )
    db_session.commit()
    edited = (await client.get("/admin/audit/verify", headers=admin)).json()
    assert edited["ok"] is False and edited["first_broken"]["seq"] == 2 and "edited" in edited["first_broken"]["reason"]

    # an event removed from the middle
    db_session.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    db_session.commit()
    deleted = (await client.get("/admin/audit/verify", headers=admin)).json()
    assert deleted["ok"] is False and deleted["first_broken"]["seq"] == 3
    assert "missing" in deleted["first_broken"]["reason"]
    assert verify(db_session)["ok"] is False
