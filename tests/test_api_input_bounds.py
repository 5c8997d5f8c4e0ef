"""Inputs the OpenAPI schema admits never crash the service.

Every body the schema of an operation admits gets a 2xx or a 4xx with a JSON message; what
it refuses is a 4xx naming the field (never a plain-text 500 from numpy, torch, the file
system or PostgreSQL underneath). The schema states the bounds, so clients generated from it
(and the fuzzing in tests/test_fuzz_api.py) see them. A 500, should one still happen, is
JSON with the request id of the ``X-Request-ID`` header and its traceback is logged.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import HTTPException

from api.datasets.schemas import MAX_SEED, MAX_SUBJECT_SIZE
from tests.conftest import bearer

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


def _is_json_4xx(r: httpx.Response, *words: str) -> str:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word in detail, (word, detail)
    return detail


# ---------------------------------------------------------------------------------------
# The bug found from outside: a negative split seed reached numpy (plain-text 500)
# ---------------------------------------------------------------------------------------


async def test_negative_split_seed_is_refused_naming_the_field(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    body = {"name": "x", "split_seed": -774, "source": "digits", "test_fraction": 0.95}
    r = await client.post("/datasets", json=body, headers=bearer(api_keys["admin"]))
    assert r.status_code == 422
    _is_json_4xx(r, "split_seed", "greater than or equal to 0")
    assert (await client.get("/datasets/x", headers=bearer(api_keys["admin"]))).status_code == 404


async def test_openapi_documents_the_bounds(client) -> None:  # type: ignore[no-untyped-def]
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    dataset = schemas["DatasetCreate"]["properties"]
    assert dataset["split_seed"]["minimum"] == 0 and dataset["split_seed"]["maximum"] == MAX_SEED
    assert dataset["subject_size"]["anyOf"][0]["minimum"] == 1
    assert dataset["subject_size"]["anyOf"][0]["maximum"] == MAX_SUBJECT_SIZE
    assert (
        dataset["test_fraction"]["exclusiveMinimum"] == 0
        and dataset["test_fraction"]["exclusiveMaximum"] == 1
    )
    assert "pattern" in dataset["source"] and dataset["source"]["maxLength"] == 1024
    model = schemas["ModelCreate"]["properties"]
    assert model["seed"]["minimum"] == 0 and model["seed"]["maximum"] == MAX_SEED
    assert model["weight_decay"]["maximum"] == 1.0
    assert model["dataset"]["pattern"] == dataset["name"]["pattern"]
    upload = schemas["Body_upload_dataset_datasets_upload_post"]["properties"]
    assert upload["split_seed"]["minimum"] == 0 and upload["split_seed"]["maximum"] == MAX_SEED


async def test_the_largest_seed_and_a_large_test_fraction_work(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    """What the schema admits at its edges loads for real: seed 2**31 - 1 (numpy and the
    ``integer`` column take it), a 0.95 test share (every class keeps a training sample)."""
    admin = bearer(api_keys["admin"])
    body = {
        "name": "edge",
        "source": "digits",
        "split_seed": MAX_SEED,
        "test_fraction": 0.95,
        "subject_size": MAX_SUBJECT_SIZE,
    }
    r = await client.post("/datasets", json=body, headers=admin)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["split_seed"] == MAX_SEED and out["subject_size"] == MAX_SUBJECT_SIZE
    assert 10 <= out["num_samples"] < 0.1 * 1797 and out["subjects"] == 1
    tiny = {"name": "nearly-all-test", "source": "digits", "test_fraction": 0.999999}
    r = await client.post("/datasets", json=tiny, headers=admin)
    assert r.status_code == 201 and r.json()["num_samples"] == 10, r.text  # one per class


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"split_seed": -1}, ["split_seed"]),
        ({"split_seed": MAX_SEED + 1}, ["split_seed"]),
        ({"split_seed": 2**64}, ["split_seed"]),  # beyond int64: PostgreSQL would refuse it
        ({"subject_size": 0}, ["subject_size"]),
        ({"subject_size": MAX_SUBJECT_SIZE + 1}, ["subject_size"]),
        ({"test_fraction": 0.0}, ["test_fraction"]),
        ({"test_fraction": 1.0}, ["test_fraction"]),
        (
            {"test_fraction": 1e-9},
            ["too few to split off a test fraction"],
        ),  # no class gets a test sample
        ({"source": "a\x00b"}, ["source"]),
        # outside LETHE_DATASET_ROOTS (the test's folder): refused before anything is read
        ({"source": "a" * 1024}, ["LETHE_DATASET_ROOTS"]),
        ({"source": "~no-such-user-here/data"}, ["LETHE_DATASET_ROOTS"]),
        ({"source": "\ud800digits"}, ["source"]),  # a lone surrogate: no file name has one
        ({"source": "   "}, ["LETHE_DATASET_ROOTS"]),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else None,
)
async def test_dataset_bodies_at_and_past_the_bounds_are_4xx(
    client, api_keys, body: dict, words: list[str]
) -> None:  # type: ignore[no-untyped-def]
    full = {"name": "bounds", "source": "digits", **body}
    # json.dumps escapes a lone surrogate as \ud800 (httpx's json= would fail to encode it).
    r = await client.post(
        "/datasets", content=json.dumps(full), headers={**bearer(api_keys["admin"]), **JSON}
    )
    _is_json_4xx(r, *words)


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "n", "source": "digits", "test_fraction": NaN}',
        '{"name": "n", "source": "digits", "test_fraction": -Infinity}',
        '{"name": "n", "source": "digits", "split_seed": 1e400}',
        '{"name": "\\ud800", "source": "digits"}',
        '{"name": "n", "source": "digits", "extra": "\\udcff"}',
    ],
)
async def test_bodies_json_cannot_echo_back_are_still_json_422(client, api_keys, raw: str) -> None:  # type: ignore[no-untyped-def]
    """Python's JSON decoder admits NaN, Infinity and lone surrogates; the 422 echoing them
    used to fail to render (strict JSON, UTF-8) and became a plain-text 500."""
    r = await client.post("/datasets", content=raw, headers={**bearer(api_keys["admin"]), **JSON})
    assert r.status_code == 422, r.text
    _is_json_4xx(r)
    assert r.json()["errors"], r.json()


async def test_upload_form_fields_have_the_same_bounds(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    np.savez(
        buf,
        images=np.zeros((20, 4, 4), np.uint8),
        labels=np.arange(20) % 2,
        sample_ids=np.array([str(i) for i in range(20)]),
    )
    for field, value in (
        ("split_seed", "-1"),
        ("split_seed", str(2**64)),
        ("subject_size", str(2**40)),
        ("test_fraction", "nan"),
    ):
        r = await client.post(
            "/datasets/upload",
            data={"name": "up", field: value},
            files={"file": ("m.npz", buf.getvalue(), "application/octet-stream")},
            headers=bearer(api_keys["admin"]),
        )
        assert r.status_code == 422, (field, value, r.text)
        _is_json_4xx(r, field)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"seed": -1}, ["seed"]),
        ({"seed": MAX_SEED + 1}, ["seed"]),
        ({"weight_decay": 1e300}, ["weight_decay"]),
        ({"dataset": "a\x00b"}, ["dataset"]),
        ({"dataset": "x" * 5000}, ["dataset"]),
        ({"concentrate": "1:" + "0" * 100}, ["concentrate"]),
        ({"concentrate": "99999999999999999999999:0.5"}, ["concentrate names class"]),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else None,
)
async def test_model_bodies_past_the_bounds_are_4xx(
    client, api_keys, db_session, body: dict, words: list[str]
) -> None:  # type: ignore[no-untyped-def]
    from tests.service_fixtures import insert_digits_dataset

    insert_digits_dataset(db_session)
    db_session.commit()
    full = {"name": "m", "dataset": "digits-subjects", "architecture": "mlp", **body}
    r = await client.post("/models", json=full, headers=bearer(api_keys["admin"]))
    _is_json_4xx(r, *words)


async def test_model_body_with_non_finite_numbers_is_422(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    raw = '{"name": "m", "dataset": "d", "architecture": "mlp", "weight_decay": Infinity}'
    r = await client.post("/models", content=raw, headers={**bearer(api_keys["admin"]), **JSON})
    assert r.status_code == 422
    _is_json_4xx(r, "weight_decay")


async def test_a_nul_in_the_url_is_400_not_a_driver_error(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    """No stored name or id holds a NUL (PostgreSQL text cannot); looking one up used to
    make the driver raise (a 500) in whichever handler read it first."""
    admin = bearer(api_keys["admin"])
    for path in (
        "/datasets/a%00b",
        "/models/a%00b/versions",
        "/requests/a%00b/status",
        "/admin/requests?subject_id=a%00b",
        "/admin/requests?model=%00",
    ):
        r = await client.get(path, headers=admin)
        assert r.status_code == 400, (path, r.text)
        _is_json_4xx(r, "NUL")
        assert r.headers["X-Request-ID"]


# ---------------------------------------------------------------------------------------
# The last resort: an unhandled exception is 500 JSON with the request id, and logged
# ---------------------------------------------------------------------------------------


def _app_that_fails() -> Any:
    from api.main import create_app

    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals: db password hunter2")

    @app.get("/boom-async")
    async def boom_async() -> None:
        raise KeyError("internal key")

    @app.get("/http-500")
    def http_500() -> None:
        raise HTTPException(500, "the weights blob does not match its sha256")

    return app


async def test_unhandled_exception_is_json_500_with_the_request_id(service_env, caplog) -> None:  # type: ignore[no-untyped-def]
    app = _app_that_fails()
    # raise_app_exceptions stays on: an exception escaping the app would fail this test.
    transport = httpx.ASGITransport(app=app)
    caplog.set_level(logging.ERROR, logger="lethe.errors")
    async with httpx.AsyncClient(transport=transport, base_url="http://lethe.test") as c:
        for path in ("/boom", "/boom-async"):
            r = await c.get(path)
            assert r.status_code == 500
            assert r.headers["content-type"] == "application/json"
            rid = r.headers["X-Request-ID"]
            assert len(rid) == 32
            assert r.json() == {"detail": "internal server error", "request_id": rid}
            assert "hunter2" not in r.text and "internal key" not in r.text
        given = await c.get("/boom", headers={"X-Request-ID": "trace-42"})
        assert given.status_code == 500 and given.headers["X-Request-ID"] == "trace-42"
        assert given.json()["request_id"] == "trace-42"

        # A deliberate 5xx from a handler names the request id too; a 4xx does not.
        deliberate = await c.get("/http-500", headers={"X-Request-ID": "trace-43"})
        assert deliberate.status_code == 500
        assert deliberate.json() == {
            "detail": "the weights blob does not match its sha256",
            "request_id": "trace-43",
        }
        missing = await c.get("/requests/nope/status")
        assert missing.status_code == 401 and "request_id" not in missing.json()

    records = [r for r in caplog.records if r.name == "lethe.errors"]
    assert len(records) == 3
    logged = records[-1]
    assert "trace-42" in logged.getMessage() and "GET /boom" in logged.getMessage()
    assert logged.exc_info is not None and logged.exc_info[0] is RuntimeError  # the traceback
    assert "hunter2" in caplog.text  # for the operator, not for the client


async def test_the_openapi_spec_still_describes_error_bodies(client) -> None:  # type: ignore[no-untyped-def]
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["schemas"]["HTTPValidationError"]["properties"]["detail"] == {
        "type": "string",
        "title": "Detail",
    }


def test_json_safe_keeps_text_and_escapes_what_json_cannot_carry() -> None:
    from api.errors import json_safe

    assert json_safe({"a": [1, 2.5, "é", None]}) == {"a": [1, 2.5, "é", None]}
    assert json_safe(["\ud800x", float("nan"), float("-inf"), b"\xff"]) == [
        "\\ud800x",
        "nan",
        "-inf",
        "\\xff",
    ]
    json.dumps(json_safe({"k\udcff": (float("inf"),)}), allow_nan=False).encode("utf-8")


@pytest.mark.parametrize("source", ["\ud800", "a\x00b", "~no-such-user-here/x", "x" * 5000])
def test_sources_no_path_can_be_are_dataset_errors(source: str) -> None:
    """The service refuses them itself (the CLI and the demo seeding call it directly too)."""
    from api.datasets.service import _load, normalise_source
    from unlearning_core.errors import DatasetError

    with pytest.raises(DatasetError):
        normalise_source(source)
        _load(source)


# ---------------------------------------------------------------------------------------
# What the stronger fuzzing found outside the datasets domain
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_runs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.reliability_world import train_world_runs

    return train_world_runs(tmp_path_factory.mktemp("bounds-runs"))


async def test_request_list_filters_out_of_range_are_422(client, api_keys) -> None:  # type: ignore[no-untyped-def]
    admin = bearer(api_keys["admin"])
    r = await client.get("/admin/requests?offset=9223372036854775808", headers=admin)
    _is_json_4xx(r, "offset")
    r = await client.get("/admin/requests?received_from=0001-01-01T00:00:00%2B14:00", headers=admin)
    _is_json_4xx(r, "received_from", "out of range")
    r = await client.get("/admin/requests?received_to=2026-11-30T10:00:00%2B01:00&offset=1000000000",
                         headers=admin)
    assert r.status_code == 200 and r.json()["items"] == [], r.text


async def test_erasure_bodies_with_nul_or_bad_names_are_422(client, db_session, world_runs) -> None:  # type: ignore[no-untyped-def]
    from tests.reliability_world import build_world

    world = build_world(db_session, world_runs)
    requester = {**bearer(world.keys["requester"]), **JSON}
    for body, words in (
        ({"subject_id": "subject-0003", "models": ["a\u0000"]}, ("models", "NUL")),
        ({"subject_id": "subject-0003", "models": ["no such/model"]}, ("models", "not a model name")),
        ({"sample_ids": ["1\u0000"]}, ("sample_ids", "NUL")),
        ({"subject_id": "subject\u00000003"}, ("subject_id", "NUL")),
    ):
        r = await client.post("/erasure-requests", content=json.dumps(body), headers=requester)
        _is_json_4xx(r, *words)
    r = await client.post("/erasure-requests", json={"subject_id": "subject-0003", "models": [world.model]},
                          headers=requester)
    assert r.status_code == 202, r.text


async def test_version_must_be_ascii_digits(client, db_session, world_runs) -> None:  # type: ignore[no-untyped-def]
    from tests.reliability_world import build_world

    world = build_world(db_session, world_runs)
    registry = bearer(world.keys["registry"])
    r = await client.get(f"/models/{world.model}/versions/%C2%B2", headers=registry)  # "²"
    _is_json_4xx(r, "version must be a number")
    r = await client.get(f"/models/{world.model}/versions/0", headers=registry)
    assert r.status_code == 200, r.text


def test_an_image_folder_listing_follows_no_folder_link_and_is_bounded(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from unlearning_core.data import image_folder
    from unlearning_core.errors import DatasetError

    for klass in ("a", "b"):
        (tmp_path / klass).mkdir()
        for i in range(3):
            Image.new("L", (4, 4), color=i * 40).save(tmp_path / klass / f"{i}.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)  # a link to a parent
    data = image_folder.load_image_folder(tmp_path, test_fraction=0.34)
    assert len(data.train) + len(data.test) == 6  # each image once; the loop is not walked

    monkeypatch.setattr(image_folder, "MAX_ENTRIES", 5)
    with pytest.raises(DatasetError, match="not an image folder"):
        image_folder.load_image_folder(tmp_path)
