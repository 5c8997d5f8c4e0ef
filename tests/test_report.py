"""Erasure reports: Grad-CAM on a model whose evidence we know, the report of a real digits
unlearning (every section, timeline appended), the CLI, and the endpoint's scopes.

Real torch training throughout (tiny), real PostgreSQL and blob store for the endpoint.
"""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tests.conftest import bearer
from tests.service_fixtures import insert_digits_dataset, insert_trained_model
from unlearning_core import pipeline
from unlearning_core.artifacts import open_artifact
from unlearning_core.cli.main import app
from unlearning_core.data import load_dataset
from unlearning_core.errors import RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.models import create_model
from unlearning_core.report.build import erasure_report
from unlearning_core.report.gradcam import GradCamError, find_target_layer, grad_cam
from unlearning_core.report.records import load_record, load_training_timeline
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore

CPU = torch.device("cpu")
SECTIONS = ("requests", "method", "metrics", "layer-distance", "gradcam", "timeline", "blobs", "audit")
FIGURES = ("layer-distance", "gradcam", "timeline")


# --- Grad-CAM on a model whose evidence is known -----------------------------------------


def quadrant_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 images; the class is the stripe orientation of the top-left quadrant only.
    The other three quadrants carry as much energy, as random noise (distractors)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    stripes = torch.stack([(yy // 2 % 2).float(), (xx // 2 % 2).float()]) * 2 - 1  # horizontal, vertical
    labels = torch.randint(0, 2, (n,), generator=g)
    images = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    for i in range(n):
        images[i, 0, :8, :8] += stripes[labels[i]]
        for r, c in ((0, 8), (8, 0), (8, 8)):
            images[i, 0, r : r + 8, c : c + 8] += torch.randn(8, 8, generator=g)
    return images, labels


def test_gradcam_highlights_the_quadrant_that_decides_the_class() -> None:
    torch.manual_seed(0)
    model = create_model("small-cnn", in_channels=1, image_size=(16, 16), num_classes=2)
    x, y = quadrant_data(512, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(150):
        idx = torch.randint(0, len(y), (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    tx, ty = quadrant_data(128, seed=2)
    with torch.no_grad():
        assert (model(tx).argmax(1) == ty).float().mean() > 0.95  # it learnt the rule
    cams = grad_cam(model, tx, ty, device=CPU)
    assert cams.shape == (128, 16, 16) and float(cams.max()) <= 1.0
    share = cams[:, :8, :8].sum(dim=(1, 2)) / cams.sum(dim=(1, 2)).clamp_min(1e-12)
    assert float(share.mean()) > 0.5, f"top-left share {float(share.mean()):.2f} (chance: 0.25)"
    plain = grad_cam(model, tx, ty, device=CPU, weighting="gradcam")  # averaged gradients
    assert float((plain[:, :8, :8].sum(dim=(1, 2)) / plain.sum(dim=(1, 2))).mean()) > 0.3
    assert find_target_layer(model)[0] == "conv2"
    assert model.training  # left as it was found


def test_gradcam_refuses_models_it_cannot_explain() -> None:
    mlp = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    with pytest.raises(GradCamError, match="convolutional"):
        find_target_layer(mlp)
    vit = create_model("vit", in_channels=1, image_size=(8, 8), num_classes=10)
    with pytest.raises(GradCamError, match="vision transformers"):
        find_target_layer(vit)
    cnn = create_model("small-cnn", in_channels=1, image_size=(8, 8), num_classes=10)
    with pytest.raises(GradCamError, match="no layer 'conv9'.*conv1, conv2"):
        find_target_layer(cnn, "conv9")
    assert find_target_layer(cnn, "conv1")[0] == "conv1"


# --- the report of a real digits unlearning ------------------------------------------------


class Sections(HTMLParser):
    """Section ids, and which of them hold an inlined PNG or a table."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None
        self.sections: dict[str, set[str]] = {}
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.current = a.get("id")
            self.sections[self.current or ""] = set()
            self.text[self.current or ""] = ""
        elif self.current and tag == "img" and (a.get("src") or "").startswith("data:image/png;base64,"):
            self.sections[self.current].add("png")
        elif self.current and tag == "table":
            self.sections[self.current].add("table")

    def handle_data(self, data: str) -> None:
        if self.current:
            self.text[self.current] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.current = None


def parse(html: str) -> Sections:
    p = Sections()
    p.feed(html)
    return p


def train_digits(store: LocalBlobStore, run_id: str, *, model: str = "small-cnn", epochs: int = 2) -> None:
    data = load_dataset("digits", subject_size=10)
    train_run(
        store, run_id=run_id, dataset=data, dataset_spec=DatasetSpec(spec="digits", subject_size=10),
        model_name=model,
        training=TrainingSpec(epochs=epochs, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0,
                              seed=0, concentrate_class=3, concentrate_share=0.2, timeline_every=10),
        recording=RecordingSpec(mode="full"), device=CPU,
    )


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two identically trained runs; each unlearns class 3 with a different method."""
    root = tmp_path_factory.mktemp("report-store")
    store = LocalBlobStore(root)
    for run_id, method in (("rep-a", "partial-amnesiac"), ("rep-b", "amnesiac")):
        train_digits(store, run_id)
        pipeline.unlearn(
            store, run_id=run_id, method=method, forget=ForgetSpec(classes=(3,)),
            method_options={"recovery_steps": 5}, device=CPU,
        )
    return root


def test_timeline_is_stored_with_the_run_and_appended_after_unlearning(digits_store: Path) -> None:
    run = open_artifact(LocalBlobStore(digits_store), "rep-a")
    timeline = load_training_timeline(run)
    assert timeline is not None and timeline.every == 10
    steps = [p.step for p in timeline.points]
    assert steps[0] == 0 and steps[-1] == run.spec.results.steps and len(steps) >= 5
    assert timeline.points[-1].test_acc > 0.5 and set(timeline.points[-1].per_class_acc) == {str(k) for k in range(10)}
    record = load_record(run.store, run.prefix, 1)
    assert record is not None and record.forget_classes == [3] and record.recovery_steps == 5
    # right after the subtraction, then after the recovery fine-tune, 5 steps later
    assert [(p.phase, p.step) for p in record.timeline] == [("unlearn", 0), ("recovery", 5)]
    assert record.timeline[0].per_class_acc["3"] < timeline.points[-1].per_class_acc["3"]
    assert record.metrics is not None and record.metrics["forget_acc"] < 0.5


def test_report_has_every_section_for_a_real_unlearning(digits_store: Path) -> None:
    from unlearning_core.report.build import Comparison

    store = LocalBlobStore(digits_store)
    run, other = open_artifact(store, "rep-a"), open_artifact(store, "rep-b")
    ledger = run.ledger()
    report = erasure_report(run, ledger, 1, device=CPU,
                            compare=Comparison(run=other, ledger=other.ledger(), version=1))
    page = parse(report.html)
    assert set(SECTIONS) <= set(page.sections)
    for section in ("layer-distance", "gradcam", "timeline"):
        assert "png" in page.sections[section], section
    for section in ("method", "metrics", "blobs"):
        assert "table" in page.sections[section], section
    assert "approximate" in page.text["method"] and "partial-amnesiac" in page.text["method"]
    assert "forget_acc" in page.text["metrics"] and "rep-b v1 amnesiac" in page.text["metrics"]
    assert ledger.versions[1].weights.sha256 in page.text["blobs"]
    assert run.spec.trained_weights.sha256 in page.text["blobs"]
    assert "command line" in page.text["audit"]  # no audit chain outside the service
    assert report.figures["gradcam"].startswith(b"\x89PNG")
    assert report.pdf().startswith(b"%PDF")
    with pytest.raises(RunError, match="version 0 .* trained model"):
        erasure_report(run, ledger, 0, device=CPU)


def test_cli_report_writes_html_pdf_and_figures(digits_store: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, [
        "report", "--store", str(digits_store), "--run-id", "rep-b", "--out", str(out),
        "--pdf", str(tmp_path / "r.pdf"), "--figures", str(tmp_path / "fig"), "--device", "cpu", "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["version"] == 1 and summary["method"] == "amnesiac" and summary["guarantee"] == "approximate"
    assert set(SECTIONS) <= set(parse(out.read_text()).sections)
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == sorted(f"report-{f}.png" for f in FIGURES)
    bad = CliRunner().invoke(app, ["report", "--store", str(digits_store), "--run-id", "rep-b",
                                   "--version", "7", "--out", str(tmp_path / "x.html")])
    assert bad.exit_code != 0 and "no version 7" in str(bad.exception)
    assert not (tmp_path / "x.html").exists()


# --- the endpoint -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report-service")
    train_digits(LocalBlobStore(root), "report-svc", epochs=1)
    return root


@pytest.mark.anyio
async def test_endpoint_serves_the_report_to_registry_and_admin_of_the_tenant(
    client, api_keys, service_env, service_run: Path, db_session
) -> None:
    from api.auth.service import create_key
    from api.blobs import get_store
    from api.database.core import get_sessionmaker
    from worker.embedded import process_pending

    shutil.copytree(service_run, Path(os.environ["LETHE_BLOB_STORE"]), dirs_exist_ok=True)
    dataset = insert_digits_dataset(db_session)
    insert_trained_model(db_session, store=get_store(), dataset_id=dataset.id, name="cnn",
                         run_id="report-svc", architecture="small-cnn", method="amnesiac")
    globex_registry = create_key(db_session, name="globex-reg", scopes=["registry"], tenant="globex")[1]
    db_session.commit()
    filed = await client.post("/erasure-requests", json={"subject_id": "subject-0003"},
                              headers=bearer(api_keys["requester"]))
    assert filed.status_code == 202, filed.text
    rid = filed.json()["id"]
    process_pending(session_factory=get_sessionmaker(), store=get_store(), device=CPU)
    status = (await client.get(f"/requests/{rid}/status", headers=bearer(api_keys["requester"]))).json()
    assert status["status"] == "completed", status

    url = "/models/cnn/versions/1/report"
    got: dict[str, Any] = {}
    for who in ("requester", "registry", "admin"):
        got[who] = await client.get(url, headers=bearer(api_keys[who]))
    assert got["requester"].status_code == 403
    for who in ("registry", "admin"):
        assert got[who].status_code == 200, got[who].text
        assert got[who].headers["content-type"].startswith("text/html")
    page = parse(got["registry"].text)
    assert set(SECTIONS) <= set(page.sections)
    assert rid in page.text["requests"] and "subject-0003" in page.text["requests"]
    assert "version.published" in page.text["audit"]
    import hashlib

    assert hashlib.sha256(got["registry"].content).hexdigest() == got["registry"].headers["x-content-sha256"]
    other = await client.get(url, headers=bearer(globex_registry))  # another tenant's model: none
    assert other.status_code == 404 and other.json()["detail"] == "no model named 'cnn'"
    v0 = await client.get("/models/cnn/versions/0/report", headers=bearer(api_keys["registry"]))
    assert v0.status_code == 404 and "version 0 is the trained model" in v0.json()["detail"]
    latest = await client.get("/models/cnn/versions/latest/report?format=pdf", headers=bearer(api_keys["admin"]))
    assert latest.status_code == 200 and latest.content.startswith(b"%PDF")
    bad = await client.get(f"{url}?format=docx", headers=bearer(api_keys["admin"]))
    assert bad.status_code == 422 and "detail" in bad.json()
