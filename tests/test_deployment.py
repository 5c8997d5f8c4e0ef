"""The deployment files: docker-compose.yml, Dockerfile, .env.example, .dockerignore.

No Docker engine is needed: the compose file is read with a YAML loader and its wiring
checked (services, the LETHE_* settings they set, the hosts their URLs name, health checks
behind every ``depends_on`` condition, the GPU profile, the bucket), and the Dockerfile is
parsed as text. Where the ``docker compose`` plugin exists, ``docker compose config`` must
accept the file as well.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from api.config import Settings
from unlearning_core.store.settings import S3Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = {"api", "worker", "worker-gpu", "postgres", "redis", "minio", "minio-init"}
LETHE_SERVICES = ("api", "worker", "worker-gpu")
STORE_PORTS = {"postgres": 5432, "redis": 6379, "minio": 9000}

# ---------------------------------------------------------------------------------------
# Compose: loading and variable interpolation (as `docker compose` does it, no .env)
# ---------------------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}`` and
    ``$$``, with ``env`` as the environment (empty: what a stack without .env gets)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg")
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return arg if unset else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise KeyError(f"${{{name}}} is required: {arg}")
            return current
        return current or ""

    return _VAR.sub(sub, value)


def _interpolate_all(node: Any, env: dict[str, str] | None = None) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_all(x, env) for x in node]
    if isinstance(node, dict):
        return {k: _interpolate_all(v, env) for k, v in node.items()}
    return node


def _variables(node: Any) -> list[re.Match[str]]:
    """Every ``${...}`` / ``$NAME`` reference in the raw file (``$$`` excluded)."""
    if isinstance(node, str):
        return [m for m in _VAR.finditer(node) if not m.group("escaped")]
    if isinstance(node, list):
        return [m for x in node for m in _variables(x)]
    if isinstance(node, dict):
        return [m for v in node.values() for m in _variables(v)]
    return []


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    """The file as the stack sees it with no .env: every variable at its default."""
    return _interpolate_all(raw_compose)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _has_healthcheck(service: dict[str, Any]) -> bool:
    hc = service.get("healthcheck") or {}
    return bool(hc.get("test")) and not hc.get("disable", False) and hc.get("test") != ["NONE"]


# ---------------------------------------------------------------------------------------
# The service's settings: every pydantic-settings class of the project
# ---------------------------------------------------------------------------------------


def _settings_classes() -> list[type[BaseSettings]]:
    """Settings classes of api/, worker/ and unlearning_core/ (split per domain), found by
    importing every module that subclasses BaseSettings; Settings and S3Settings always."""
    found: dict[str, type[BaseSettings]] = {}
    for package in ("api", "worker", "unlearning_core"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "BaseSettings)" not in path.read_text(encoding="utf-8"):
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            module = importlib.import_module(name)
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, BaseSettings)
                    and obj is not BaseSettings
                    and obj.__module__ == name
                ):
                    found[f"{name}.{obj.__qualname__}"] = obj
    for cls in (Settings, S3Settings):
        found.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    return list(found.values())


def _env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif alias is not None and hasattr(alias, "choices"):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


@pytest.fixture(scope="module")
def settings_classes() -> list[type[BaseSettings]]:
    return _settings_classes()


@pytest.fixture(scope="module")
def known_settings(settings_classes: list[type[BaseSettings]]) -> set[str]:
    names = set().union(*(_env_names(cls) for cls in settings_classes))
    # the two the brief names must be among them, with their prefixes
    assert {
        "LETHE_DATABASE_URL",
        "LETHE_BLOB_STORE",
        "LETHE_S3_ENDPOINT",
        "LETHE_S3_SECRET_KEY",
    } <= names
    return names


# ---------------------------------------------------------------------------------------
# Compose: services and their wiring
# ---------------------------------------------------------------------------------------


def test_the_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert SERVICES <= set(services), f"missing: {sorted(SERVICES - set(services))}"


def test_api_and_worker_run_the_same_image(services: dict[str, dict[str, Any]]) -> None:
    api, worker = services["api"], services["worker"]
    assert api.get("image") and api.get("image") == worker.get("image")
    assert api.get("build") and api.get("build") == worker.get("build")
    assert api["build"]["context"] == "."
    # the GPU worker is the same Dockerfile, built with CUDA torch under its own tag
    gpu = services["worker-gpu"]
    assert gpu["build"]["context"] == "." and gpu["image"] != api["image"]
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX_URL"].rsplit("/", 1)[-1]
    assert api["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_commands(services: dict[str, dict[str, Any]]) -> None:
    assert command(services["api"])[:2] == ["lethe", "serve"]
    assert "0.0.0.0" in command(services["api"])
    assert command(services["worker"])[:2] == ["lethe", "worker"]
    assert _option(command(services["worker"]), "--device") == "cpu"
    assert command(services["worker-gpu"])[:2] == ["lethe", "worker"]


def _option(cmd: list[str], name: str) -> str | None:
    for i, arg in enumerate(cmd):
        if arg == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def test_service_commands_are_real_lethe_commands(services: dict[str, dict[str, Any]]) -> None:
    """Every `lethe SUB --option` a service runs exists in the console script."""
    import typer.main

    from api.cli import app

    commands = typer.main.get_command(app).commands  # typer's own click: duck-typed
    for name in LETHE_SERVICES:
        cmd = command(services[name])
        assert cmd[0] == "lethe"
        sub = commands.get(cmd[1])
        assert sub is not None, (
            f"{name}: `lethe {cmd[1]}` is not a command (have {sorted(commands)})"
        )
        options = {opt for p in sub.params for opt in (*p.opts, *p.secondary_opts)}
        for arg in cmd[2:]:
            if arg.startswith("-"):
                assert arg.split("=", 1)[0] in options, f"{name}: `lethe {cmd[1]}` has no {arg}"


def test_every_lethe_variable_is_a_real_setting(
    services: dict[str, dict[str, Any]], known_settings: set[str]
) -> None:
    for name, service in services.items():
        unknown = sorted(
            k
            for k in environment(service)
            if k.startswith("LETHE_") and k.upper() not in known_settings
        )
        assert not unknown, f"{name} sets {unknown}, which no settings class reads"


def test_every_lethe_value_validates(
    services: dict[str, dict[str, Any]],
    settings_classes: list[type[BaseSettings]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The defaults the services get parse as their settings (no 'flase', no bad URL)."""
    import os

    for name in LETHE_SERVICES:
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.upper().startswith("LETHE_")]:
                m.delenv(key)
            for key, value in environment(services[name]).items():
                m.setenv(key, value)
            for cls in settings_classes:
                cls()  # raises pydantic.ValidationError on a bad value


def test_the_services_share_one_configuration(services: dict[str, dict[str, Any]]) -> None:
    """API and workers must agree on where the database, broker and blobs are."""
    shared = (
        "LETHE_DATABASE_URL",
        "LETHE_BROKER_URL",
        "LETHE_BLOB_STORE",
        "LETHE_S3_ENDPOINT",
        "LETHE_S3_ACCESS_KEY",
        "LETHE_S3_SECRET_KEY",
        "LETHE_UPLOAD_DIR",
    )
    api = environment(services["api"])
    for name in LETHE_SERVICES:
        env = environment(services[name])
        for key in shared:
            assert env.get(key) == api.get(key), f"{name}: {key} differs from the api's"
    assert api["LETHE_EMBEDDED_WORKER"] == "false", "the Celery workers do the jobs, not the API"
    assert environment(services["worker"])["LETHE_DEVICE"] == "cpu"


def test_urls_point_at_services_of_the_file(services: dict[str, dict[str, Any]]) -> None:
    from sqlalchemy.engine import make_url

    env = environment(services["api"])
    pg = environment(services["postgres"])
    db = make_url(env["LETHE_DATABASE_URL"])
    assert db.drivername == "postgresql+psycopg"
    assert (db.host, db.port) == ("postgres", STORE_PORTS["postgres"])
    assert (db.username, db.password, db.database) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )

    broker = urlsplit(env["LETHE_BROKER_URL"])
    assert broker.scheme == "redis"
    assert (broker.hostname, broker.port) == ("redis", STORE_PORTS["redis"])
    redis_password = environment(services["redis"]).get("REDISCLI_AUTH")
    assert broker.password == redis_password, "the broker URL's password is the one Redis requires"

    host, _, port = env["LETHE_S3_ENDPOINT"].rpartition(":")
    assert (host, int(port)) == ("minio", STORE_PORTS["minio"])
    minio = environment(services["minio"])
    assert env["LETHE_S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert env["LETHE_S3_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert env["LETHE_BLOB_STORE"].startswith("s3://")

    # and generally: any URL-valued LETHE_* setting names a host of this file
    for name in LETHE_SERVICES:
        for key, value in environment(services[name]).items():
            if key.startswith("LETHE_") and "://" in value and not value.startswith("s3://"):
                hostname = urlsplit(value).hostname
                assert hostname in services, (
                    f"{name}: {key} points at {hostname!r}, no such service"
                )


def test_the_store_services_listen_where_the_urls_say(services: dict[str, dict[str, Any]]) -> None:
    for name, port in STORE_PORTS.items():
        published = [str(p).rsplit(":", 1)[-1] for p in services[name].get("ports", [])]
        assert str(port) in published or not published, f"{name} publishes {published}, not {port}"
    assert any(str(p).endswith(":8000") for p in services["api"]["ports"])


def test_depends_on_conditions_have_something_to_wait_for(
    services: dict[str, dict[str, Any]],
) -> None:
    checked = 0
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_healthy":
                assert _has_healthcheck(services[target]), (
                    f"{name} waits for {target} to be healthy; it has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert str(services[target].get("restart", "no")) == "no", (
                    f"{target} is waited for to exit; it must not restart"
                )
            else:
                assert condition == "service_started", condition
            # a service outside a profile cannot need one that only a profile starts
            if services[target].get("profiles"):
                assert set(services[target]["profiles"]) <= set(service.get("profiles") or []), (
                    f"{name} depends on {target}, which only starts with a profile"
                )
            checked += 1
    assert checked
    for name in LETHE_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "postgres", "redis", "minio"):
        assert _has_healthcheck(services[name]), name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    # the workers run no HTTP server: the image's /healthz check must be off for them
    for name in ("worker", "worker-gpu"):
        assert services[name]["healthcheck"].get("disable") is True, name


def test_the_gpu_worker(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["worker-gpu"]
    assert gpu.get("profiles") == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") or d.get("device_ids"))
        for d in devices
    ), devices
    cmd = command(gpu)
    device = _option(cmd, "--device")
    assert device is not None and re.fullmatch(r"cuda:\d+", device)
    assert "gpu" in (_option(cmd, "--queues") or "").split(",")
    assert environment(gpu)["LETHE_DEVICE"] == device
    # the other services start without the profile
    for name in SERVICES - {"worker-gpu"}:
        assert not services[name].get("profiles"), name


def test_minio_init_creates_the_bucket_of_the_blob_store(
    services: dict[str, dict[str, Any]],
) -> None:
    bucket = urlsplit(environment(services["api"])["LETHE_BLOB_STORE"]).netloc
    init = services["minio-init"]
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = init.get(key) or []
        parts += [value] if isinstance(value, str) else [str(v) for v in value]
    script = "\n".join(parts)
    alias = re.search(r"mc\s+alias\s+set\s+(\S+)\s+https?://minio:9000\s", script)
    assert alias, "minio-init must point an mc alias at http://minio:9000"
    made = re.findall(r"mc\s+mb\s+(?:--\S+\s+|-\w\s+)*(\S+)/(\S+)", script)
    assert (alias.group(1), bucket) in made, (
        f"minio-init makes {made}, not {alias.group(1)}/{bucket}"
    )
    assert "--ignore-existing" in script, "a second start must not fail on the existing bucket"
    assert environment(init)["MINIO_ROOT_USER"] == environment(services["minio"])["MINIO_ROOT_USER"]
    assert (
        environment(init)["MINIO_ROOT_PASSWORD"]
        == environment(services["minio"])["MINIO_ROOT_PASSWORD"]
    )
    assert services["minio"]["command"][:2] == ["server", "/data"]
    assert "--console-address" in services["minio"]["command"]


def test_named_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    used: dict[str, set[str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = (
                volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            )
            if source and not source.startswith((".", "/", "~", "$")):
                used.setdefault(name, set()).add(source)
                assert source in declared, f"{name} mounts undeclared volume {source}"
    for name, target in (
        ("postgres", "/var/lib/postgresql/data"),
        ("minio", "/data"),
        ("redis", "/data"),
    ):
        assert any(str(v).endswith(":" + target) for v in services[name]["volumes"]), name
    # uploaded manifests are read by whichever process trains: the same volume everywhere
    upload_dir = environment(services["api"])["LETHE_UPLOAD_DIR"]
    for name in LETHE_SERVICES:
        assert f"uploads:{upload_dir}" in services[name]["volumes"], name


def test_secrets_come_from_variables_with_defaults(raw_compose: dict[str, Any]) -> None:
    """Every variable has a default (the stack starts without .env) and no secret is
    written into the file: passwords are ``${VAR:-default}`` references."""
    for m in _variables(raw_compose):
        assert m.group("op") in (":-", "-"), (
            f"${{{m.group('braced') or m.group('named')}}} has no default"
        )
    for service in raw_compose["services"].values():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|_AUTH$", key):
                assert value.startswith("${"), f"{key} must come from a variable, not the file"


def test_env_example_documents_every_variable_with_its_default(raw_compose: dict[str, Any]) -> None:
    defaults: dict[str, str] = {}
    for m in _variables(raw_compose):
        name = m.group("braced") or m.group("named")
        assert defaults.setdefault(name, m.group("arg")) == m.group("arg"), (
            f"{name} has two defaults"
        )
    example: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert set(example) == set(defaults), (
        f"only in .env.example: {sorted(set(example) - set(defaults))}; "
        f"only in docker-compose.yml: {sorted(set(defaults) - set(example))}"
    )
    for key, value in example.items():
        assert value == defaults[key], (
            f".env.example {key}={value}, compose default {defaults[key]}"
        )


def test_env_files_stay_out_of_git_and_the_image() -> None:
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (
        ".venv",
        "var",
        ".git",
        ".env",
        "bench/results",
        ".pytest_cache",
        "**/__pycache__",
    ):
        assert entry in ignored, f".dockerignore lacks {entry}"
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin), else a standalone Compose v2+ `docker-compose`; None
    when neither is installed (no daemon is needed for `config`)."""
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]) is None:
            continue
        done = subprocess.run(
            [*cli, "version", "--short"], check=False, capture_output=True, text=True
        )
        major = re.match(r"v?(\d+)\.", done.stdout.strip())
        if done.returncode == 0 and major and int(major.group(1)) >= 2:  # not the Python v1
            return cli
    return None


@pytest.mark.skipif(_compose_cli() is None, reason="the docker compose plugin is not installed")
@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config_accepts_the_file(profile: str | None, tmp_path: Path) -> None:
    """`docker compose config` parses and validates without a daemon."""
    env_file = tmp_path / "empty.env"  # the defaults, whatever .env the checkout has
    env_file.write_text("")
    args = [*(_compose_cli() or []), "--env-file", str(env_file), "-f", str(COMPOSE_FILE)]
    if profile:
        args += ["--profile", profile]
    done = subprocess.run(
        [*args, "config", "--format", "json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    expected = SERVICES if profile else SERVICES - {"worker-gpu"}
    assert set(rendered["services"]) == expected


# ---------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = [[]]
    for ins in dockerfile_instructions():
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages  # stages[0]: the global ARGs before the first FROM


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for keyword, args in instructions:
        if keyword == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_base_image_is_a_build_argument() -> None:
    stages = _stages()
    assert _args(stages[0]).get("BASE_IMAGE") == "python:3.11-slim"
    names: set[str] = set()
    for stage in stages[1:]:
        image, *rest = stage[0][1].split()
        assert image == "${BASE_IMAGE}" or image in names, (
            f"FROM {image}: every stage builds on BASE_IMAGE"
        )
        if len(rest) == 2 and rest[0].upper() == "AS":
            names.add(rest[1])


def test_dockerfile_runs_as_a_non_root_user_with_the_default_command() -> None:
    final = _stages()[-1]
    keywords = [k for k, _ in final]
    assert "USER" in keywords and "CMD" in keywords
    assert keywords.index("USER") < keywords.index("CMD"), "USER must come before CMD"
    args = _args(final)
    user = [a for k, a in final if k == "USER"][-1]
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), user)
    assert resolved.split(":")[0] not in ("", "root", "0"), f"USER {user} runs as root"
    cmd = json.loads([a for k, a in final if k == "CMD"][-1])
    assert cmd == ["lethe", "serve", "--host", "0.0.0.0"]


def test_dockerfile_healthcheck_and_port() -> None:
    final = _stages()[-1]
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert health, "HEALTHCHECK missing"
    assert "/healthz" in health[-1] and "python" in health[-1] and "curl" not in health[-1]
    exposed = " ".join(a for k, a in final if k == "EXPOSE").split()
    assert "8000" in exposed
    env = " ".join(a for k, a in final if k == "ENV")
    assert "LETHE_HOST=0.0.0.0" in env and "LETHE_PORT=8000" in env
    assert "LETHE_SEED_DEMO=false" in env, "the production image seeds no demo unless asked"


def test_dockerfile_environment_names_real_settings(known_settings: set[str]) -> None:
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(args):
                key = pair.split("=", 1)[0]
                if key.startswith("LETHE_"):
                    assert key in known_settings, f"ENV {key} is no setting"


def test_dockerfile_installs_cpu_torch_at_the_pinned_versions_and_no_dev_extras() -> None:
    pins = dict(
        re.fullmatch(r"(torch|torchvision)==(\S+)", dep).groups()
        for dep in _pyproject()["project"]["dependencies"]
        if re.fullmatch(r"(torch|torchvision)==(\S+)", dep)
    )
    args = {}
    for stage in _stages():
        args |= _args(stage)
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["TORCHVISION_VERSION"] == pins["torchvision"]
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    for keyword, run in dockerfile_instructions():
        if keyword == "RUN" and "pip install" in run:
            assert not re.search(r"\.\[|\[test\]|\[dev\]|-e\s", run), (
                f"dev extras or editable install: {run}"
            )


def test_dockerfile_copies_every_package_of_the_project() -> None:
    copied = set()
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            copied.update(p.rstrip("/") for p in args.split()[:-1])
    packages = {
        p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert {"pyproject.toml", "README.md"} <= copied  # README.md: the package's readme
