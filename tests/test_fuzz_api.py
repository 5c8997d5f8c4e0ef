"""Property-based fuzzing of every operation of the OpenAPI spec (schemathesis + hypothesis).

Each generated case is sent with a valid key of every scope (requester, registry, admin),
once as generated and once with its path parameters pointing at things that exist (the
world's model, version, dataset and request), so the handlers behind the 404-dependencies
are fuzzed too. Every response must be a non-5xx whose body and content type match what the
spec documents for that status.

Bounded in ``make test`` (``LETHE_FUZZ_EXAMPLES``, default 6 examples per operation); the
longer run on demand::

    LETHE_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/test_fuzz_api.py -q
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from api.main import create_app
from tests.conftest import bearer
from tests.reliability_world import World, build_world, train_world_run

EXAMPLES = int(os.environ.get("LETHE_FUZZ_EXAMPLES", "6"))
SCOPES = ("requester", "registry", "admin")
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="session")
def world_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_world_run(tmp_path_factory.mktemp("fuzz-runs"))


@pytest.fixture
def world(service_env: str, db_session, world_runs: Path) -> World:  # type: ignore[no-untyped-def]
    return build_world(db_session, world_runs)


#: Loaded at collection (``schemathesis.pytest.from_fixture`` does not work with pytest 9);
#: the app reads its database and blob store settings per request, so the world fixture's
#: environment is the one each case runs against.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


def existing(world: World, case: Any) -> dict[str, str]:
    """Path parameters naming the world's objects, for the operation of ``case``."""
    path = case.operation.path
    values = {
        "request_id": world.request_id,
        "version": "0" if "weights" in path else "latest",
        "name": world.dataset if path.startswith("/datasets") else world.model,
    }
    return {k: values[k] for k in (case.path_parameters or {}) if k in values}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_responses_match_the_schema(case: Any, world: World) -> None:
    variants = [dict(case.path_parameters or {})]
    if case.path_parameters:
        variants.append({**case.path_parameters, **existing(world, case)})
    for params in variants:
        case.path_parameters = params
        for scope in SCOPES:
            headers = {**(case.headers or {}), **bearer(world.keys[scope])}
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS, headers=headers)
