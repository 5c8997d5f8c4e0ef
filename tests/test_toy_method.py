"""A method added from outside the library (tests/toy_method.py: one module, one
registration line) with an option of its own, ``scale``, is seen everywhere options go:
``lethe methods``, ``lethe unlearn --option``, ``POST /erasure-requests``' ``method_options``
(validated against the method, 422 naming a bad option), the job's status, the audit trail,
and the worker's run of the job (the options it ran with, the published weights).

The toy's result is known in closed form (weights pulled towards their initialisation by
``1 + scale``), so the weights alone show that the option reached the method.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_safetensors
from sqlalchemy import func, select

from tests import toy_method
from tests.conftest import bearer, lethe_with_plugin
from tests.service_fixtures import insert_digits_dataset, insert_trained_model
from tests.toy_method import NAME, shrunk
from unlearning_core.artifacts import open_artifact
from unlearning_core.data import load_dataset
from unlearning_core.errors import MethodError
from unlearning_core.methods import OptionError, method_names, validate_options
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import BlobStore, LocalBlobStore

CPU = torch.device("cpu")
RUN_ID = "toy-method-run"
MODEL = "toy-digits"
SUBJECT = "subject-0003"  # training samples "30".."39"
SHARED = {"recovery_steps": 0, "seed": 0}  # the shared options' defaults


@pytest.fixture
def toy() -> Iterator[str]:
    """The toy method, registered for this test only."""
    toy_method.register()
    try:
        yield NAME
    finally:
        toy_method.unregister()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small recorded digits MLP (full updates, subjects of ten samples)."""
    root = tmp_path_factory.mktemp("toy-method-store")
    train_run(
        LocalBlobStore(root), run_id=RUN_ID, dataset=load_dataset("digits", subject_size=10),
        dataset_spec=DatasetSpec(spec="digits", subject_size=10), model_name="mlp",
        training=TrainingSpec(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0),
        recording=RecordingSpec(mode="full"), device=CPU,
    )
    return root


@pytest.fixture
def store_copy(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run: tests that publish versions must not share one."""
    return Path(shutil.copytree(trained, tmp_path / "store"))


def expected_weights(store: BlobStore, scale: float) -> dict[str, torch.Tensor]:
    run = open_artifact(store, RUN_ID)
    return shrunk(
        run.load_weights(run.spec.trained_weights), run.load_weights(run.spec.initial_weights), scale
    )


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the library ---------------------------------------------------------------------------


def test_registration_and_validation(toy: str) -> None:
    assert toy in method_names()
    opts = validate_options(toy, {"scale": 2})
    assert opts.model_dump() == {**SHARED, "scale": 2.0}
    assert validate_options(toy, None).model_dump() == {**SHARED, "scale": 1.0}
    for bad, needle in (({"scale": 0}, "greater than 0"), ({"scale": 11}, "less than or equal to 10"),
                        ({"scale": "big"}, "valid number")):
        with pytest.raises(OptionError, match=needle) as err:
            validate_options(toy, bad)
        assert "'scale'" in str(err.value) and NAME in str(err.value) and err.value.options == ("scale",)
    with pytest.raises(OptionError, match="has no option 'nope'.*its options: recovery_steps, seed, scale"):
        validate_options(toy, {"nope": 1})
    # another method's option: the message says who takes it
    with pytest.raises(OptionError, match=f"has no option 'scale' \\({NAME} takes it\\)"):
        validate_options("amnesiac", {"scale": 2})


def test_unregistered_after_the_test() -> None:
    assert NAME not in method_names()
    with pytest.raises(MethodError, match="unknown unlearning method"):
        validate_options(NAME, {})


# --- the CLI, in a process that registered the toy -------------------------------------------

def lethe_with_toy(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``lethe ARGS`` in a new interpreter that registered the toy first, as a plugin would."""
    return lethe_with_plugin("toy_method", *args, check=check)


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(proc.stdout.strip().splitlines()[-1])



def test_lethe_methods_lists_the_toy_and_its_option(toy: str, lethe_main) -> None:  # type: ignore[no-untyped-def]
    listed = {m["name"]: m for m in last_json(lethe_main("methods", "--json"))["methods"]}
    toy = listed[NAME]
    assert toy["guarantee"] == "approximate"
    assert toy["trained_with"] == ["plain", "amnesiac", "partial-amnesiac"]
    assert [o["name"] for o in toy["options"]] == ["recovery_steps", "seed", "scale"]
    (scale,) = [o for o in toy["options"] if o["name"] == "scale"]
    assert scale == {
        "name": "scale", "type": "number", "default": 1.0, "required": False,
        "bounds": {"gt": 0.0, "le": 10.0},
        "description": "shrink the distance to the initial weights by 1 + scale",
    }
    # the built-ins are listed from their models too, each with its own options
    options = {name: {o["name"] for o in m["options"]} for name, m in listed.items()}
    assert "prune_search" in options["partial-amnesiac"] and "prune_search" not in options["amnesiac"]
    assert {"steps", "lr", "mix_retain"} <= options["label-flip"] and "scale" not in options["label-flip"]
    assert listed["sisa"]["trained_with"] == ["sisa"] and listed["retrain"]["guarantee"] == "exact"
    table = lethe_main("methods").stdout
    assert NAME in table and "scale" in table and "shrink the distance" in table


def test_lethe_unlearn_option_reaches_the_method(store_copy: Path, toy: str, lethe_main) -> None:  # type: ignore[no-untyped-def]
    base = ["unlearn", "--store", str(store_copy), "--run-id", RUN_ID, "--method", NAME,
            "--forget-subject", SUBJECT, "--no-evaluate", "--device", "cpu", "--json"]
    out = last_json(lethe_with_toy(*base, "--option", "scale=3"))
    assert out["method_options"] == {**SHARED, "scale": 3.0} and out["version"] == 1
    store = LocalBlobStore(store_copy)
    run = open_artifact(store, RUN_ID)
    published = run.load_weights(run.ledger().head.weights)
    assert same_state(published, expected_weights(store, 3.0))
    assert not same_state(published, run.load_weights(run.spec.trained_weights))  # not a no-op
    # a dedicated flag feeds the same options; JSON values parse, the rest stay strings
    # (in this process: the plugin-style process above already showed the registration path)
    dry = last_json(lethe_main(*base, "--dry-run", "--recovery-steps", "2", "--option", "scale=0.5"))
    assert dry["method_options"] == {"recovery_steps": 2, "seed": 0, "scale": 0.5} and dry["version"] is None


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--option", "scale=-1"], ["'scale'", "greater than 0"]),
        (["--option", "scale=big"], ["'scale'", "'big'"]),
        (["--option", "nope=1"], ["'nope'", "recovery_steps, seed, scale"]),
        (["--option", "scale"], ["NAME=VALUE"]),
        (["--option", "scale=1", "--option", "scale=2"], ["'scale'", "twice"]),
        (["--recovery-steps", "1", "--option", "recovery_steps=2"], ["--recovery-steps"]),
        (["--mix-retain", "0.5"], ["'mix_retain'", "label-flip", "--mix-retain"]),
    ],
)
def test_lethe_unlearn_refuses_bad_options_naming_them(  # type: ignore[no-untyped-def]
    toy: str, trained: Path, args: list[str], needles: list[str], lethe_main
) -> None:
    proc = lethe_main("unlearn", "--store", str(trained), "--run-id", RUN_ID, "--method", NAME,
                      "--forget-subject", SUBJECT, "--device", "cpu", *args)
    err = " ".join(proc.stderr.replace("│", " ").split())
    assert proc.returncode == 2, proc.stderr
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in proc.stderr
    assert not (trained / "runs" / RUN_ID / "weights" / "v0001.safetensors").exists()


# --- the service -------------------------------------------------------------------------------


@pytest.fixture
def toy_model(toy: str, service_env: str, trained: Path, db_session) -> str:
    """The trained run registered as model ``toy-digits`` (trained amnesiac: its default
    unlearning method is amnesiac, which has no ``scale``)."""
    from api.blobs import get_store

    shutil.copytree(trained, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    dataset = insert_digits_dataset(db_session)
    insert_trained_model(db_session, store=get_store(), dataset_id=dataset.id, name=MODEL,
                         run_id=RUN_ID, architecture="mlp", method="amnesiac")
    db_session.commit()
    return MODEL


async def file(client, key: str, body: dict[str, Any], **headers: str):
    return await client.post("/erasure-requests", json=body, headers={**bearer(key), **headers})


async def status_of(client, key: str, request_id: str) -> dict[str, Any]:
    resp = await client.get(f"/requests/{request_id}/status", headers=bearer(key))
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.anyio
async def test_api_validates_stores_shows_and_audits_method_options(
    client, api_keys, toy_model: str, db_session
) -> None:
    from api.erasure.models import ErasureRequest

    requester, admin = api_keys["requester"], api_keys["admin"]
    body = {"subject_id": SUBJECT, "models": [toy_model], "method": NAME}

    bad = await file(client, requester, {**body, "method_options": {"scale": -1}})
    assert bad.status_code == 422, bad.text
    assert "'scale'" in bad.json()["detail"] and NAME in bad.json()["detail"]
    unknown = await file(client, requester, {**body, "method_options": {"nope": 1}})
    assert unknown.status_code == 422, unknown.text
    assert "'nope'" in unknown.json()["detail"] and "recovery_steps, seed, scale" in unknown.json()["detail"]
    # without `method`, each target's default method decides: amnesiac has no `scale`
    default = await file(client, requester, {"subject_id": SUBJECT, "models": [toy_model],
                                             "method_options": {"scale": 2}})
    assert default.status_code == 422, default.text
    assert "'scale'" in default.json()["detail"] and toy_model in default.json()["detail"]
    not_an_object = await file(client, requester, {**body, "method_options": [1]})
    assert not_an_object.status_code == 422 and "method_options" in not_an_object.json()["detail"]
    db_session.expire_all()
    assert db_session.scalar(select(func.count(ErasureRequest.id))) == 0  # refusals store nothing

    key = {"Idempotency-Key": "toy-options-1"}
    ok = await file(client, requester, {**body, "method_options": {"scale": 2}}, **key)
    assert ok.status_code == 202, ok.text
    rid = ok.json()["id"]
    replay = await file(client, requester, {**body, "method_options": {"scale": 2}}, **key)
    assert replay.status_code == 202 and replay.json()["id"] == rid
    other = await file(client, requester, {**body, "method_options": {"scale": 3}}, **key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]

    status = await status_of(client, requester, rid)
    assert [(j["model"], j["method"], j["method_options"]) for j in status["jobs"]] == [
        (toy_model, NAME, {**SHARED, "scale": 2.0})
    ]
    audit = (await client.get(f"/admin/requests/{rid}/audit", headers=bearer(admin))).json()
    (received,) = [e for e in audit if e["kind"] == "request.received"]
    assert received["payload"]["method_options"] == {toy_model: {**SHARED, "scale": 2.0}}

    # the model's default method with one of its options; and a request naming none
    amnesiac = await file(client, requester, {"subject_id": "subject-0005", "models": [toy_model],
                                              "method_options": {"bn_repair": "never"}})
    assert amnesiac.status_code == 202, amnesiac.text
    (job,) = (await status_of(client, requester, amnesiac.json()["id"]))["jobs"]
    assert job["method"] == "amnesiac" and job["method_options"]["bn_repair"] == "never"
    plain = await file(client, requester, {"subject_id": "subject-0006", "models": [toy_model],
                                           "method": NAME, "method_options": {}})
    assert plain.status_code == 202, plain.text
    (job,) = (await status_of(client, requester, plain.json()["id"]))["jobs"]
    assert job["method_options"] is None  # the method's defaults
    audit = (await client.get(f"/admin/requests/{plain.json()['id']}/audit", headers=bearer(admin))).json()
    assert [e["payload"]["method_options"] for e in audit if e["kind"] == "request.received"] == [None]

    login = await client.post("/dashboard/login", data={"api_key": admin, "next": "/dashboard/requests"})
    assert login.status_code == 303, login.text
    page = await client.get(f"/dashboard/requests/{rid}")
    assert page.status_code == 200
    assert '<span data-option="scale">scale=2.0</span>' in page.text


@pytest.mark.anyio
async def test_the_worker_runs_the_job_with_its_options(client, api_keys, toy_model: str) -> None:
    """End to end through the embedded worker: the job's stored options reach the method
    (needs api/erasure/flows.py to pass ``method_options=`` to ``apply_method``)."""
    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from worker.embedded import process_pending

    requester = api_keys["requester"]
    filed = await file(client, requester, {"subject_id": SUBJECT, "models": [toy_model], "method": NAME,
                                           "method_options": {"scale": 2}})
    assert filed.status_code == 202, filed.text
    rid = filed.json()["id"]
    assert process_pending(session_factory=get_sessionmaker(), store=get_store(), device=CPU) == 1

    status = await status_of(client, requester, rid)
    assert status["status"] == "completed", status
    (job,) = status["jobs"]
    assert job["version"]["number"] == 1
    # what the method ran with (pipeline.report's method_options), kept with the job's result
    assert job["details"]["method_options"] == {**SHARED, "scale": 2.0}
    weights = await client.get(f"/models/{toy_model}/versions/1/weights", headers=bearer(api_keys["registry"]))
    assert weights.status_code == 200
    assert same_state(load_safetensors(weights.content), expected_weights(get_store(), 2.0))
    # the version's erasure report names the method and the options it ran with
    page = await client.get(f"/models/{toy_model}/versions/1/report", headers=bearer(api_keys["registry"]))
    assert page.status_code == 200, page.text[:500]
    assert f"<td>{NAME}</td>" in page.text and "<code>scale=2.0</code>" in page.text
