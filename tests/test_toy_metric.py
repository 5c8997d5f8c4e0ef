"""A metric added as one function plus ``@register_metric`` shows up everywhere.

The toy metric (:mod:`tests.toy_metric`: mean top-class probability on the forget set) is
registered for one test at a time and unregistered afterwards. It is checked against an
independent computation (a plain forward pass, not the library's ``Outputs``) and between
the original and the unlearned model, in: ``evaluate_unlearning`` on a real digits run,
the ``lethe`` CLI (``unlearn --json`` and the ``--compare`` table, in a real process that
registered it), the erasure report, and the service (a request processed by the embedded
worker: the stored version metrics, ``GET /requests/{id}/status``, the model's versions,
the dashboard pages and the stored report).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests import toy_metric
from tests.conftest import bearer, lethe_with_plugin
from tests.service_fixtures import insert_digits_dataset, insert_trained_model
from unlearning_core import pipeline
from unlearning_core.artifacts import open_artifact
from unlearning_core.data import Dataset, load_dataset
from unlearning_core.forget import ForgetSpec
from unlearning_core.metrics import (
    MetricError,
    evaluate_unlearning,
    get_metric,
    metric_names,
    register_metric,
    unregister_metric,
)
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore

CPU = torch.device("cpu")
RUN_ID = "toy-metric"
TOY = toy_metric.NAME
BUILTIN_COMPUTED = (
    "forget_acc", "retain_acc", "test_acc", "per_class_acc", "macro_f1", "mia_auc", "mia_efficacy",
    "mia_auc_lira", "mia_tpr_lira", "layer_distance", "relearn_steps", "relearn_reached",
)


@pytest.fixture
def toy() -> Iterator[str]:
    """The toy metric, registered for this test only."""
    toy_metric.register()
    try:
        yield TOY
    finally:
        unregister_metric(TOY)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One recorded digits MLP (full updates; class 3 concentrated so amnesiac forgets it)."""
    root = tmp_path_factory.mktemp("toy-metric-store")
    train_run(
        LocalBlobStore(root), run_id=RUN_ID, dataset=load_dataset("digits", subject_size=10),
        dataset_spec=DatasetSpec(spec="digits", subject_size=10), model_name="mlp",
        training=TrainingSpec(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0,
                              concentrate_class=3, concentrate_share=0.2),
        recording=RecordingSpec(mode="full"), device=CPU,
    )
    return root


@pytest.fixture
def store_copy(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run: tests that publish versions must not share one."""
    return Path(shutil.copytree(trained, tmp_path / "store"))


def independent_confidence(model: torch.nn.Module, dataset: Dataset, positions: np.ndarray) -> float:
    """The toy metric recomputed without the library's outputs: one plain forward pass."""
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(dataset.train.images[torch.as_tensor(positions)]), dim=1)
    return float(probs.max(dim=1).values.mean())


def class_positions(dataset: Dataset, label: int) -> np.ndarray:
    return np.flatnonzero(dataset.train.labels.numpy() == label)


# --- the registry itself -----------------------------------------------------------------


def test_registry_holds_the_design_names_and_every_table_reads_it() -> None:
    from api.dashboard.service import CHART_METRICS, VERSION_METRICS
    from unlearning_core.pipeline import GAP_METRICS
    from unlearning_core.report.build import METRIC_ROWS

    assert metric_names(computed=True) == BUILTIN_COMPUTED
    assert {"unlearn_seconds", "recovery_seconds", "storage_bytes"} <= set(metric_names(computed=False))
    assert tuple(VERSION_METRICS) == (
        "forget_acc", "retain_acc", "test_acc", "macro_f1", "mia_auc", "mia_efficacy", "relearn_steps",
        "unlearn_seconds", "recovery_seconds",
    )
    assert tuple(CHART_METRICS) == ("forget_acc", "retain_acc", "test_acc", "mia_auc")
    assert tuple(GAP_METRICS) == ("forget_acc", "retain_acc", "test_acc", "mia_auc", "mia_efficacy")
    assert {"forget_acc", "relearn_steps", "unlearn_seconds", "batches_subtracted", "bytes_read"} <= set(METRIC_ROWS)
    assert get_metric("relearn_steps").cost == "expensive" and get_metric("forget_acc").cost == "cheap"
    assert get_metric("layer_distance").needs == {"original_state"}
    assert get_metric("mia_auc").better == "closer to retrain is better"
    assert get_metric("forget_acc").format(0.25) == "0.250" and get_metric("forget_acc").format(None) == "-"

    # the lists are live: a registration shows up in each, an unregistration removes it
    toy_metric.register()
    try:
        for names in (VERSION_METRICS, CHART_METRICS, GAP_METRICS, METRIC_ROWS):
            assert TOY in names and list(names)[-1] == TOY
        with pytest.raises(ValueError, match="already registered"):
            toy_metric.register()
    finally:
        unregister_metric(TOY)
    assert TOY not in VERSION_METRICS and TOY not in metric_names()
    with pytest.raises(MetricError, match="no metric"):
        unregister_metric(TOY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"show": ("dashboard",)}, "unknown surfaces"),
        ({"needs": ("retrained_model",)}, "unknown inputs"),
        ({"kind": "per_class", "show": ("chart",)}, "only scalar"),
        ({"direction": "up"}, "direction"),
        ({"fmt": ".3q"}, "format"),
    ],
)
def test_registration_mistakes_fail_at_registration(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"label": "Bad", "direction": "higher", **kwargs}
    with pytest.raises(ValueError, match=message):
        register_metric("bad_metric", **args)(toy_metric.forget_confidence)
    assert "bad_metric" not in metric_names()


# --- evaluate_unlearning -----------------------------------------------------------------


def test_toy_metric_in_evaluate_unlearning(toy: str, trained: Path) -> None:
    store = LocalBlobStore(trained)
    done = pipeline.apply_method(
        store, run_id=RUN_ID, method="amnesiac", forget=ForgetSpec(classes=(3,)), device=CPU, publish=False
    )
    run, data = done.context.artifact, done.context.dataset
    positions = done.context.forget_positions
    original_state = run.load_weights(run.spec.trained_weights)
    original = run.model_with(original_state)
    common: dict[str, Any] = dict(device=CPU, original_state=original_state)

    after = evaluate_unlearning(done.outcome.model, data, positions, original_forget_acc=1.0,
                                relearn=run.optim(), relearn_max_steps=3, **common)
    before = evaluate_unlearning(original, data, positions, **common)
    assert after[toy] == pytest.approx(independent_confidence(done.outcome.model, data, positions), abs=1e-5)
    assert before[toy] == pytest.approx(independent_confidence(original, data, positions), abs=1e-5)
    assert abs(after[toy] - before[toy]) > 0.01, (before[toy], after[toy])
    assert after["forget_acc"] < before["forget_acc"]  # it did unlearn
    # the built-ins are untouched, in their order; the toy follows them
    # (the LiRA figures need shadow models, which this call does not pass)
    assert tuple(after) == (*(n for n in BUILTIN_COMPUTED if n not in {"mia_auc_lira", "mia_tpr_lira"}), toy)
    # selecting and skipping
    cheap = evaluate_unlearning(done.outcome.model, data, positions, original_forget_acc=1.0,
                                relearn=run.optim(), expensive=False, **common)
    assert toy in cheap and "relearn_steps" not in cheap and "relearn_reached" not in cheap
    only = evaluate_unlearning(done.outcome.model, data, positions, device=CPU, names=[toy, "unlearn_seconds"])
    assert only == {toy: after[toy]}
    with pytest.raises(MetricError, match="unknown metric 'no_such'"):
        evaluate_unlearning(done.outcome.model, data, positions, device=CPU, names=["no_such"])


# --- the CLI, in a process that registered the toy ---------------------------------------

def lethe_with_toy(*args: str) -> str:
    """``lethe ARGS`` in a new interpreter that registered the toy first, as a plugin would."""
    return lethe_with_plugin("toy_metric", *args).stdout


def table_cells(text: str) -> list[list[str]]:
    """The rows of a rich table as stripped cells (header included)."""
    return [[c.strip() for c in line.strip().strip("┃│").split("┃" if "┃" in line else "│")]
            for line in text.splitlines() if line.strip().startswith(("┃", "│"))]


def test_toy_metric_in_cli_json_and_compare_table(toy: str, store_copy: Path, lethe_main) -> None:  # type: ignore[no-untyped-def]
    # the comparison behind the table, in this process (the toy fixture registered it here)
    compared = pipeline.compare(LocalBlobStore(store_copy), run_id=RUN_ID, methods=["retrain", "amnesiac"],
                                forget=ForgetSpec(classes=(3,)), device=CPU)
    rows = {r["method"]: r for r in compared["rows"]}
    for row in rows.values():
        assert isinstance(row[TOY], float)
        assert row["retrain_gap"][TOY] == pytest.approx(row[TOY] - rows["retrain"][TOY])
    assert rows["amnesiac"][TOY] != rows["retrain"][TOY]

    base = ["unlearn", "--store", str(store_copy), "--run-id", RUN_ID, "--forget-class", "3", "--device", "cpu"]
    cells = table_cells(lethe_with_toy(*base, "--compare", "retrain,amnesiac"))
    header, body = cells[0], {c[0]: c for c in cells[1:]}
    col = header.index(TOY)
    for method, row in rows.items():  # the same runs from the same start: the same values
        assert body[method][col] == f"{row[TOY]:.4f}"  # in the registered format
    assert "forget_acc" in header and "speedup_vs_retrain" in header

    # --json through the same main in this process (the plugin-style process above already
    # showed the toy reaches a new interpreter's tables)
    done = lethe_main(*base, "--method", "amnesiac", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    run = open_artifact(LocalBlobStore(store_copy), RUN_ID)
    data = run.dataset()
    published = run.model_with(run.load_weights(run.ledger().head.weights))
    assert out["version"] == 1 and out[TOY] == pytest.approx(
        independent_confidence(published, data, class_positions(data, 3)), abs=1e-5
    )
    assert out[TOY] == pytest.approx(rows["amnesiac"][TOY], abs=1e-6)  # same method, same start


# --- the erasure report ------------------------------------------------------------------


class MetricsSection(HTMLParser):
    """The rows (cell texts) of the report's metrics table."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.in_cell = False
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.inside = dict(attrs).get("id") == "metrics"
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.rows[-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.inside and self.in_cell:
            self.rows[-1][-1] += data


def test_toy_metric_in_the_erasure_report(toy: str, store_copy: Path) -> None:
    from unlearning_core.report.build import erasure_report

    store = LocalBlobStore(store_copy)
    result = pipeline.unlearn(store, run_id=RUN_ID, method="amnesiac", forget=ForgetSpec(classes=(3,)), device=CPU)
    run = open_artifact(store, RUN_ID)
    data = run.dataset()
    original = run.model_with(run.load_weights(run.spec.trained_weights))
    report = erasure_report(run, run.ledger(), 1, device=CPU)

    page = MetricsSection()
    page.feed(report.html)
    (row,) = [r for r in page.rows if r and toy_metric.LABEL in r[0]]
    assert TOY in row[0]
    previous, new = row[1], row[2]
    assert new == f"{result[TOY]:.4f}"  # the metrics recorded at unlearning time
    assert previous == f"{independent_confidence(original, data, class_positions(data, 3)):.4f}"
    assert previous != new
    assert row[3] == "closer to retrain is better"
    columns = report.summary["metrics"]
    assert columns["v1 amnesiac"][TOY] == pytest.approx(result[TOY])


# --- the service: worker, status, versions, dashboard -----------------------------------


def metric_cells(html: str, name: str) -> list[str]:
    return re.findall(rf'<td data-metric="{name}">([^<]*)</td>', html)


@pytest.mark.anyio
async def test_toy_metric_in_the_service(
    toy: str, client, api_keys, service_env, trained: Path, db_session
) -> None:
    from safetensors.torch import load as load_safetensors

    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from worker.embedded import process_pending

    shutil.copytree(trained, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    dataset = insert_digits_dataset(db_session)
    insert_trained_model(db_session, store=get_store(), dataset_id=dataset.id, name="toy-mlp",
                         run_id=RUN_ID, architecture="mlp", method="amnesiac")
    db_session.commit()
    filed = await client.post("/erasure-requests", json={"subject_id": "subject-0003"},
                              headers=bearer(api_keys["requester"]))
    assert filed.status_code == 202, filed.text
    rid = filed.json()["id"]
    assert process_pending(session_factory=get_sessionmaker(), store=get_store(), device=CPU) == 1

    status = (await client.get(f"/requests/{rid}/status", headers=bearer(api_keys["requester"]))).json()
    assert status["status"] == "completed", status
    (job,) = status["jobs"]
    value = job["version"]["metrics"][TOY]
    # the value the worker stored is the toy function of the published weights
    weights = await client.get("/models/toy-mlp/versions/1/weights", headers=bearer(api_keys["registry"]))
    assert weights.status_code == 200
    run = open_artifact(get_store(), RUN_ID)
    data = run.dataset()
    forget = np.flatnonzero(np.asarray(data.train.subject_ids) == "subject-0003")
    assert len(forget) == 10
    published = run.model_with(load_safetensors(weights.content))
    original = run.model_with(run.load_weights(run.spec.trained_weights))
    assert value == pytest.approx(independent_confidence(published, data, forget), abs=1e-5)
    assert value != pytest.approx(independent_confidence(original, data, forget), abs=1e-4)

    versions = (await client.get("/models/toy-mlp/versions", headers=bearer(api_keys["registry"]))).json()
    assert [v["metrics"].get(TOY) for v in versions if v["number"] == 1] == [value]

    login = await client.post("/dashboard/login", data={"api_key": api_keys["admin"], "next": "/dashboard/models"})
    assert login.status_code == 303, login.text
    model_page = await client.get("/dashboard/models/toy-mlp")
    assert model_page.status_code == 200
    assert f'data-metric="{TOY}"' in model_page.text and toy_metric.LABEL in model_page.text
    assert metric_cells(model_page.text, TOY) == [f"{value:.4f}", ""]  # v1, then v0 (no metrics)
    chart = re.search(r'<script type="application/json" id="version-chart-data">(.*?)</script>',
                      model_page.text, re.S)
    assert chart is not None and json.loads(chart.group(1))["series"][TOY] == [None, pytest.approx(value)]
    request_page = await client.get(f"/dashboard/requests/{rid}")
    assert request_page.status_code == 200
    assert metric_cells(request_page.text, TOY) == [f"{value:.4f}"] and toy_metric.LABEL in request_page.text

    report = await client.get("/models/toy-mlp/versions/1/report", headers=bearer(api_keys["registry"]))
    assert report.status_code == 200
    assert toy_metric.LABEL in report.text and f"{value:.4f}" in report.text
