"""The ``lethe`` console script: the core commands plus the service's (serve, worker, keys, audit).

unlearning_core's CLI knows nothing of the service; this module adds the service commands
to the same Typer app, so one ``lethe`` binary does both.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from api.client_commands import register as register_client_commands
from unlearning_core.cli.main import app
from unlearning_core.cli.main import main as core_main

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
runs_app = typer.Typer(help="Runs recorded elsewhere.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
register_client_commands(app)  # lethe request, lethe pull (api/client_commands.py)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: LETHE_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: LETHE_PORT].")] = None,
) -> None:
    """Run the API with its embedded worker: migrate, bootstrap, seed the demo, serve."""
    from api.serve import serve as run_server

    run_server(host=host, port=port)


@app.command()
def worker(
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda, cuda:N or auto: where this worker computes (default: LETHE_DEVICE)."),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated queues to consume (default: gpu,cpu on a CUDA device, else cpu)."),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks at once (1 with the solo pool).")] = 1,
    pool: Annotated[
        str,
        typer.Option(help="solo (default: tasks run in this process, CUDA-safe), prefork or threads."),
    ] = "solo",
    dispatch: Annotated[
        bool,
        typer.Option(help="Also run the dispatcher thread that re-enqueues pending and abandoned work."),
    ] = True,
    hostname: Annotated[str | None, typer.Option(help="Celery node name (default: lethe-DEVICE-PID@host).")] = None,
    loglevel: Annotated[str | None, typer.Option(help="DEBUG, INFO, ... (default: LETHE_LOG_LEVEL).")] = None,
) -> None:
    """Run a Celery worker (LETHE_BROKER_URL) on one device: one per GPU, as many machines as you like."""
    from worker.main import run_worker

    try:
        run_worker(
            device=device,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            concurrency=concurrency,
            pool=pool,
            loglevel=loglevel,
            hostname=hostname,
            dispatch=dispatch,
        )
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(2) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scope: Annotated[list[str], typer.Option("--scope", help="requester, registry or admin; repeat for several.")],
    tenant: Annotated[str, typer.Option(help="Tenant the key acts for.")] = "default",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    from api.auth.service import create_key
    from api.serve import prepare_database

    session_factory = prepare_database()
    with session_factory() as db:
        try:
            row, key = create_key(db, name=name, scopes=scope, tenant=tenant)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--tenant" if "tenant" in str(exc) else "--scope") from None
        db.commit()
    out = {"id": row.id, "name": name, "tenant": tenant, "scopes": row.scopes, "key": key}
    sys.stdout.write((json.dumps(out) if as_json else f"{key}\n  scopes: {', '.join(row.scopes)}  tenant: {tenant}") + "\n")


@audit_app.command("verify")
def audit_verify(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Verify the audit hash chain; exit status 1 and the first broken link if it fails."""
    from api.audit.service import verify
    from api.serve import prepare_database

    with prepare_database()() as db:
        result = verify(db)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    elif result["ok"]:
        sys.stdout.write(f"audit chain intact: {result['checked']} events\n")
    else:
        broken = result["first_broken"]
        sys.stdout.write(f"audit chain BROKEN at event {broken['seq']}: {broken['reason']}\n")
    raise typer.Exit(0 if result["ok"] else 1)


@audit_app.command("residuals")
def audit_residuals(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List what still holds an erased subject past its deadline (versions not withdrawn,
    blobs the purge should have deleted); exit status 1 if there is anything."""
    from api.purge.residuals import scan
    from api.serve import prepare_database

    with prepare_database()() as db:
        found = scan(db=db)
    if as_json:
        sys.stdout.write(json.dumps({"count": len(found), "residuals": found}) + "\n")
    else:
        for r in found:
            owner = r.get("model") or f"dataset {r.get('dataset')}"
            sys.stdout.write(f"{r['kind']}\t{r.get('tenant')}/{owner}\t{r['key']}\n")
    raise typer.Exit(1 if found else 0)


@runs_app.command("import")
def runs_import(
    name: Annotated[str, typer.Option(help="The model's name in the tenant.")],
    run_id: Annotated[str, typer.Option("--run-id", help="The run, complete under runs/<run-id>/ of the tenant's store.")],
    dataset: Annotated[str, typer.Option(help="The tenant's registered dataset holding the run's sample ids.")],
    tenant: Annotated[str, typer.Option(help="The tenant the model belongs to.")] = "default",
    unlearn_method: Annotated[str | None, typer.Option("--unlearn-method", help="Default method of erasure requests.")] = None,
    atol: Annotated[float, typer.Option(help="Tolerance of initial + updates = final (full recordings).")] = 1e-4,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Verify a run recorded with record_training and register it as a model (version 0),
    as POST /models/import does; the first problem found is the error and nothing is registered."""
    from api.blobs import tenant_store
    from api.registry.importing import import_run
    from api.registry.schemas import ModelImport
    from api.serve import prepare_database
    from unlearning_core.errors import LetheError

    try:
        body = ModelImport(name=name, run_id=run_id, dataset=dataset, unlearn_method=unlearn_method, atol=atol)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with prepare_database()() as db:
        try:
            model = import_run(db=db, body=body, store=tenant_store(tenant), tenant=tenant, actor="cli")
        except LetheError as exc:
            sys.stderr.write(f"error: {exc}\n")
            raise typer.Exit(2) from None
        out = {"name": model.name, "tenant": tenant, "run_id": run_id, "status": model.status,
               "architecture": model.architecture, "method": model.method}
    sys.stdout.write((json.dumps(out) if as_json else f"imported {run_id} as model {name!r} ({out['status']})") + "\n")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Benchmark: a script bench/NAME.py or bench/NAME.sh of the checkout.")] = None,
) -> None:
    """Run a benchmark of the checkout (`lethe bench NAME --help` for its options); it prints
    one JSON object on its last stdout line and writes it under bench/results/."""
    import subprocess
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "bench"
    helpers = {"common", "provenance"}  # modules the benchmarks import, not benchmarks
    scripts = {p.stem: p for p in sorted(folder.glob("*.py")) + sorted(folder.glob("*.sh")) if p.stem not in helpers}
    if name in (None, "--help", "-h"):
        typer.echo("usage: lethe bench NAME [ARGS]...\n\nbenchmarks: " + ", ".join(scripts or ["none found"]))
        raise typer.Exit(0)
    if not folder.is_dir():
        raise typer.BadParameter(f"no bench/ folder beside the installed package ({folder})", param_hint="NAME")
    if name not in scripts:
        raise typer.BadParameter(f"unknown benchmark {name!r}; known: {', '.join(scripts)}", param_hint="NAME")
    script = scripts[name]
    cmd = [sys.executable, str(script)] if script.suffix == ".py" else ["bash", str(script)]
    raise typer.Exit(subprocess.call([*cmd, *ctx.args], cwd=folder.parent))  # noqa: S603


def main() -> None:
    core_main()
