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
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from api.audit.service import verify
from api.main import create_app
from tests.conftest import bearer
from tests.reliability_world import SUBJECT, World, build_world, train_world_run

ROOT = Path(__file__).resolve().parents[1]
CALLERS = ("none", "bad", "requester", "registry", "admin", "other_tenant")
BAD_KEY = "lethe_this-key-was-never-issued-000000000000"


# ---------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def world_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_world_run(tmp_path_factory.mktemp("security-runs"))


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


def scoped(requester: int = 403, registry: int = 403, admin: int = 403, other_tenant: int | None = None) -> dict[str, int]:
    """Expected status per caller of a route that needs a key (401 without a valid one)."""
    return {
        "none": 401,
        "bad": 401,
        "requester": requester,
        "registry": registry,
        "admin": admin,
        "other_tenant": requester if other_tenant is None else other_tenant,
    }


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
    ("POST", "/erasure-requests"): Row(
        scoped(requester=202, admin=202), lambda c, w: {"json": {"subject_id": SUBJECT}}
    ),
    ("GET", "/requests/{request_id}/status"): Row(scoped(requester=200, admin=200, other_tenant=404)),
    ("GET", "/requests/{request_id}/receipt"): Row(scoped(requester=200, admin=200, other_tenant=404)),
    ("GET", "/receipt-key"): Row(PUBLIC),
    ("GET", "/admin/requests"): Row(scoped(admin=200)),
    ("GET", "/admin/requests/stats"): Row(scoped(admin=200)),
    ("GET", "/admin/requests/{request_id}"): Row(scoped(admin=200)),
    ("GET", "/admin/requests/{request_id}/audit"): Row(scoped(admin=200)),
    # a queued request can be neither approved, denied nor retried: 409 once authorized
    ("POST", "/admin/requests/{request_id}/approve"): Row(scoped(admin=409)),
    ("POST", "/admin/requests/{request_id}/deny"): Row(scoped(admin=409)),
    ("POST", "/admin/requests/{request_id}/retry"): Row(scoped(admin=409)),
    ("POST", "/admin/requests/{request_id}/cancel"): Row(scoped(admin=200)),
    ("GET", "/admin/audit/verify"): Row(scoped(admin=200)),
    ("GET", "/admin/residuals"): Row(scoped(admin=200)),
    ("GET", "/models"): Row(scoped(registry=200, admin=200)),
    ("POST", "/models"): Row(scoped(admin=202), lambda c, w: {"json": {**MODEL_BODY, "name": f"m-{c}"}}),
    ("GET", "/models/{name}"): Row(scoped(registry=200, admin=200)),
    ("GET", "/models/{name}/versions"): Row(scoped(registry=200, admin=200)),
    ("GET", "/models/{name}/versions/{version}"): Row(scoped(registry=200, admin=200)),
    ("GET", "/models/{name}/versions/{version}/weights"): Row(scoped(registry=200, admin=200)),
    ("HEAD", "/models/{name}/versions/{version}/weights"): Row(scoped(registry=200, admin=200)),
    ("GET", "/models/{name}/health"): Row(scoped(registry=200, admin=200)),
    ("PATCH", "/models/{name}/policy"): Row(
        scoped(admin=200), lambda c, w: {"json": {"compact_after_requests": 50}}
    ),
    ("POST", "/models/{name}/compact"): Row(scoped(admin=202)),
    ("GET", "/datasets"): Row(scoped(admin=200)),
    ("POST", "/datasets"): Row(
        scoped(admin=201), lambda c, w: {"json": {"name": f"d-{c}", "source": "digits", "subject_size": 10}}
    ),
    ("POST", "/datasets/upload"): Row(scoped(admin=201), lambda c, w: {**upload_body(), "data": {"name": f"u-{c}"}}),
    ("GET", "/datasets/{name}"): Row(scoped(admin=200)),
    ("GET", "/metrics"): Row(scoped(admin=200)),
    # webhooks: the admin's POST makes webhook 1 (ids restart per test), used by the rows below
    ("POST", "/webhooks"): Row(scoped(admin=201), lambda c, w: {"json": {"url": f"http://127.0.0.1:9/{c}"}}),
    ("GET", "/webhooks"): Row(scoped(admin=200)),
    ("GET", "/webhooks/{webhook_id}/deliveries"): Row(scoped(admin=200)),
    ("DELETE", "/webhooks/{webhook_id}"): Row(scoped(admin=204)),
    # version 0 has no erasure report: past the scope check, the 404 says so
    ("GET", "/models/{name}/versions/{version}/report"): Row(scoped(registry=404, admin=404)),
    # The dashboard authenticates by a session cookie that only an admin key's login opens;
    # a bearer header opens nothing there: every page sends the caller to the login form.
    ("GET", "/dashboard"): Row({c: 303 for c in CALLERS}),
    ("GET", "/dashboard/login"): Row(PUBLIC),
    ("POST", "/dashboard/login"): Row(
        {**{c: 401 for c in CALLERS}, "admin": 303},
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
        webhook_id=1,
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
