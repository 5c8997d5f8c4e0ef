"""Property-based fuzzing of every operation of the OpenAPI spec (schemathesis + hypothesis).

Two tests, one schema:

* **Per operation** (``test_no_server_error_and_responses_match_the_schema``): each
  operation's examples, its coverage cases (boundary values of every bounded field, just
  inside and just outside: ``-1``, ``2**31``, ``0.0``, ``1.0``, wrong types, missing
  fields; positive *and* negative generation modes) and random cases, each sent with a key
  of every scope (requester, registry, admin), once as generated and once with its path
  parameters pointing at things that exist (the world's model, version, dataset, request).
* **Stateful** (``test_stateful_sequences_never_fail``): schemathesis's state machine
  (``schema.as_state_machine()``, run by hypothesis' ``run_state_machine_as_test``) chains
  operations along OpenAPI links, the ones schemathesis infers plus those added below
  (:func:`with_links`): register a dataset, then train a model on it and read it back; file
  an erasure request, then read, audit, approve, deny, cancel or retry it.

Random text almost never names something that exists, so without help neither test gets
past the first lookup: ``POST /datasets`` needs a readable ``source`` before its seed,
test share or subject size reach numpy and PostgreSQL (a negative ``split_seed`` used to
crash numpy there with a plain-text 500; only a run that happened to send ``"digits"``
found it). Fuzz dictionaries (:data:`CONFIG`) give about half the generated values of such
fields a real one (a built-in dataset or a small manifest, the world's dataset, model,
subjects and samples, the registered architectures), so the generated seeds, shares, sizes
and option values reach the code below. Integers draw part of their values from the edges
where storage and libraries draw lines (``-1``, ``0``, ``2**31 - 1``, ``2**31``, ``2**63``,
``2**64``): a fifth of the integer query and path parameters, and about a third of the body
fields that reach numpy, torch or an integer column (seeds, sizes, counts), the schema-valid
edges in positive mode, the others in negative mode.

Every response must be a non-5xx whose body and content type match what the spec documents
for that status. Deterministic (``derandomize``) and bounded in ``make test``
(``LETHE_FUZZ_EXAMPLES``, default 6 examples per operation; the stateful test runs
``LETHE_FUZZ_STATEFUL_EXAMPLES`` scenarios, default 8 x that, of up to 6 steps); the
longer run on demand::

    LETHE_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/test_fuzz_api.py -q
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.generation.stateful.state_machine import StepInput
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from schemathesis.specs.openapi.stateful import transition

from api.main import create_app
from tests.conftest import bearer
from tests.reliability_world import DATASET, MODEL, World, build_world, train_world_runs
from unlearning_core.methods import method_names
from unlearning_core.models import model_names

EXAMPLES = int(os.environ.get("LETHE_FUZZ_EXAMPLES", "6"))
STATEFUL_EXAMPLES = int(os.environ.get("LETHE_FUZZ_STATEFUL_EXAMPLES", str(8 * EXAMPLES)))
STATEFUL_STEPS = 6
SCOPES = ("requester", "registry", "admin")
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]

#: A small ``.npz`` manifest (2 classes, 40 samples, no test set of its own) written by the
#: ``manifest`` fixture: a second real source, small enough that extreme test shares and
#: subject sizes hit the "too few samples" paths of the split.
MANIFEST = Path(tempfile.gettempdir()) / f"lethe-fuzz-{os.getuid()}" / "small-manifest.npz"

#: Fuzz dictionaries: real values for the fields that must name something that exists.
#: Positive-mode cases draw a schema-valid entry with the given probability; the rest of
#: the body (seeds, shares, sizes, options) stays generated.
CONFIG = SchemathesisConfig.from_dict(
    {
        "dictionaries": {
            "sources": {"values": ["digits", str(MANIFEST)]},
            "datasets": {"values": [DATASET]},
            "architectures": {"values": list(model_names())},
            "models": {"values": [MODEL]},
            "subjects": {"values": [f"subject-{i:04d}" for i in range(0, 144, 5)]},
            "samples": {"values": [str(i) for i in range(0, 1437, 37)]},
            "methods": {"values": list(method_names())},
            # Integers where storage and libraries draw their lines: numpy seeds (>= 0),
            # PostgreSQL integer / bigint, torch seeds (< 2**64).
            "edge-integers": {"values": [-1, 0, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64]},
        },
        "generation": {
            "dictionaries": {"integer": {"dictionary": "edge-integers", "probability": 0.2}}
        },
        "parameters": {
            "body.source": {"dictionary": "sources", "probability": 0.5},
            "body.dataset": {"dictionary": "datasets", "probability": 0.5},
            "body.architecture": {"dictionary": "architectures", "probability": 0.8},
            "body.unlearn_method": {"dictionary": "methods", "probability": 0.5},
            "body.subject_id": {"dictionary": "subjects", "probability": 0.5},
            "body.sample_ids[*]": {"dictionary": "samples", "probability": 0.5},
            "body.models[*]": {"dictionary": "models", "probability": 0.5},
            # Integer fields that reach numpy, torch or an integer column: their edges.
            **{
                f"body.{field}": {"dictionary": "edge-integers", "probability": 0.3}
                for field in (
                    "split_seed",
                    "seed",
                    "subject_size",
                    "epochs",
                    "batch_size",
                    "shards",
                    "slices",
                )
            },
        },
    }
)


def _operation_id(spec: dict[str, Any], method: str, path: str) -> str | None:
    return spec["paths"].get(path, {}).get(method, {}).get("operationId")


def with_links(spec: dict[str, Any]) -> dict[str, Any]:
    """Add the OpenAPI links schemathesis cannot infer (a body field fed by an earlier
    response, operations whose ids appear in no path of their own response). A link whose
    operations are gone is left out: the erasure endpoints are being reworked."""
    links = [
        # (source method, path, status) -> (name, target method, path, link fields)
        (
            ("post", "/datasets", "201"),
            ("TrainOnDataset", "post", "/models"),
            {"requestBody": {"dataset": "$response.body#/name"}},
        ),
        (
            ("post", "/datasets/upload", "201"),
            ("TrainOnUpload", "post", "/models"),
            {"requestBody": {"dataset": "$response.body#/name"}},
        ),
        *[
            (
                ("post", "/erasure-requests", "202"),
                (name, method, path),
                {"parameters": {"request_id": "$response.body#/id"}},
            )
            for name, method, path in (
                ("Status", "get", "/requests/{request_id}/status"),
                ("AdminView", "get", "/admin/requests/{request_id}"),
                ("Audit", "get", "/admin/requests/{request_id}/audit"),
                ("Approve", "post", "/admin/requests/{request_id}/approve"),
                ("Deny", "post", "/admin/requests/{request_id}/deny"),
                ("Cancel", "post", "/admin/requests/{request_id}/cancel"),
                ("Retry", "post", "/admin/requests/{request_id}/retry"),
            )
        ],
    ]
    for (method, path, status), (name, target_method, target_path), fields in links:
        target = _operation_id(spec, target_method, target_path)
        response = spec["paths"].get(path, {}).get(method, {}).get("responses", {}).get(status)
        if target is None or response is None:
            continue
        response.setdefault("links", {})[name] = {"operationId": target, **fields}
    return spec


def load_schema() -> Any:
    """The app's spec with :func:`with_links`, fuzzed in-process (ASGI) with :data:`CONFIG`.

    Loaded at collection (``schemathesis.pytest.from_fixture`` does not work with pytest 9);
    the app reads its database and blob store settings per request, so the world fixture's
    environment is the one each case runs against.
    """
    app = create_app()
    loaded = schemathesis.openapi.from_dict(with_links(app.openapi()), config=CONFIG)
    loaded.app = app
    loaded.location = "/openapi.json"
    return loaded


schema = load_schema()


@pytest.fixture(scope="session")
def world_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_world_runs(tmp_path_factory.mktemp("fuzz-runs"))


@pytest.fixture(scope="session")
def manifest() -> Path:
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(
        MANIFEST,
        images=rng.integers(0, 255, size=(40, 6, 6), dtype=np.uint8),
        labels=np.arange(40) % 2,
        sample_ids=np.array([f"m{i}" for i in range(40)]),
    )
    return MANIFEST


@pytest.fixture
def world(service_env: str, db_session, world_runs: Path, manifest: Path) -> World:  # type: ignore[no-untyped-def]
    return build_world(db_session, world_runs)


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


APIWorkflow = schema.as_state_machine()


def _cases(method: str, path: str) -> st.SearchStrategy[StepInput] | None:
    """Cases of one operation in both generation modes, as the first step of a scenario
    (``None`` if the spec has no such operation)."""
    try:
        operation = schema[path][method]
    except LookupError:  # schemathesis' OperationNotFound
        return None
    return st.one_of(
        [
            operation.as_strategy(generation_mode=mode)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]
    ).map(StepInput.initial)


#: ``POST /erasure-requests`` as a first step too. schemathesis only starts scenarios at
#: operations whose inputs it believes some operation produces, and no operation produces a
#: data subject or a sample id (the datasets hold them); the fuzz dictionaries supply real ones.
ERASURE_CASES = _cases("POST", "/erasure-requests")


def fresh_world(runs: Path) -> World:
    """Empty the service database and build the world again (about 0.2 s)."""
    from sqlalchemy import text

    from api.database.core import Base, get_engine, get_sessionmaker

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with get_engine().begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    with get_sessionmaker()() as db:
        return build_world(db, runs)


def test_stateful_sequences_never_fail(world: World, world_runs: Path) -> None:
    """Scenarios of up to :data:`STATEFUL_STEPS` linked calls with an admin key (admin
    implies every scope, so each call reaches its handler): deep paths a single call cannot
    reach, with every response checked as above.

    Each scenario starts from a fresh world: hypothesis replays and extends scenarios, and
    one that met what an earlier one left behind (a 409 where it had a 201) would draw other
    steps, which hypothesis reports as flaky data generation; it also keeps runs deterministic.
    """

    class Workflow(APIWorkflow):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            self.headers = bearer(fresh_world(world_runs).keys["admin"])

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {**(case.headers or {}), **self.headers}}

        # Built as schemathesis builds its own first steps: the case is recorded and the
        # response routed to the bundle of its status, so the links from a 202 (status,
        # audit, approve, deny, cancel, retry) follow it.
        if ERASURE_CASES is not None:
            RANDOM__POST_erasure_requests = transition(
                name="RANDOM__POST_erasure_requests",
                target=Bundle("catch_all"),
                input=ERASURE_CASES,
                precondition=lambda machine: True,
            )

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS, headers=kwargs.get("headers"))

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.generate],  # no shrinking: the failing sequence is printed as found
            suppress_health_check=list(HealthCheck),
        )
    )
