"""``method: "auto"``: the judge's ranking picks the method per request and model, and the
service records why (unlearning_core/methods/auto.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import bearer
from tests.test_erasure_api import models, trained_runs, work  # noqa: F401 - fixtures
from unlearning_core.methods.auto import Judged, Ranking, choose, load_ranking

RANKING = Ranking(
    methods=(
        Judged("neggrad-plus", met_target=True, score=0.7, speedup=40.0),
        Judged("amnesiac", met_target=True, score=0.6, speedup=90.0),
        Judged("scrub", met_target=False, score=0.8, misses=("test accuracy",)),
        Judged("partial-amnesiac", met_target=False, score=0.5, misses=("forget accuracy",)),
    ),
    source="judge.json",
)


def test_the_fastest_method_that_met_the_target_wins_among_those_the_model_can_use() -> None:
    full = choose(trained_with="amnesiac", forget_samples=10, train_samples=1000, ranking=RANKING)
    assert full.method == "amnesiac" and "inside retraining's intervals" in full.reason and "90x" in full.reason
    # a plain model recorded nothing: amnesiac cannot unlearn it, NegGrad+ can
    plain = choose(trained_with="plain", forget_samples=10, train_samples=1000, ranking=RANKING)
    assert plain.method == "neggrad-plus" and "amnesiac" not in plain.considered


def test_without_a_method_that_met_the_target_the_best_score_answers_and_compaction_makes_it_exact() -> None:
    ranking = Ranking(methods=tuple(j for j in RANKING.methods if not j.met_target))
    chosen = choose(trained_with="partial-amnesiac", forget_samples=10, train_samples=1000, ranking=ranking)
    assert chosen.method == "scrub" and "missing test accuracy" in chosen.reason and "compaction" in chosen.reason


def test_a_large_request_or_no_ranking() -> None:
    large = choose(trained_with="amnesiac", forget_samples=300, train_samples=1000, ranking=RANKING)
    assert large.method == "retrain" and "30%" in large.reason
    sisa = choose(trained_with="sisa", forget_samples=300, train_samples=1000, ranking=RANKING)
    assert sisa.method == "sisa"
    none = choose(trained_with="amnesiac", forget_samples=10, train_samples=1000, ranking=None)
    assert none.method == "amnesiac" and "no judge ranking" in none.reason


def test_a_ranking_is_read_from_a_judge_result_file(tmp_path: Path) -> None:
    path = tmp_path / "judge.json"
    path.write_text(json.dumps({"time": "2026-11-30", "ranking": [
        {"method": "salun", "met_target": True, "score": 0.9, "speedup": 25.0}, {"method": "retrain", "met_target": True}]}))
    ranking = load_ranking(path)
    assert ranking is not None and [j.method for j in ranking.ordered()] == ["salun", "retrain"]
    assert load_ranking(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert load_ranking(tmp_path / "bad.json") is None


@pytest.mark.anyio
async def test_the_service_picks_per_model_and_records_why(  # type: ignore[no-untyped-def]
    client, api_keys, models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.config import get_settings

    ranking = tmp_path / "judge.json"
    ranking.write_text(json.dumps({"time": "t", "ranking": [
        {"method": "neggrad-plus", "met_target": True, "score": 0.7, "speedup": 40.0,
         "options": {"steps": 3, "alpha": 0.8, "recovery_steps": 2}},
        {"method": "amnesiac", "met_target": True, "score": 0.6, "speedup": 90.0,
         "options": {"an_option_amnesiac_lost": 1}}]}))
    monkeypatch.setenv("LETHE_METHOD_RANKING", str(ranking))
    get_settings.cache_clear()
    requester = bearer(api_keys["requester"])
    r = await client.post("/erasure-requests", json={"subject_id": "subject-0003", "method": "auto"}, headers=requester)
    assert r.status_code == 202, r.text
    status = (await client.get(f"/requests/{r.json()['id']}/status", headers=requester)).json()
    jobs = {j["model"]: j for j in status["jobs"]}
    # digits-a recorded partial updates: amnesiac cannot use them; digits-b recorded full ones
    assert jobs["digits-b"]["method"] == "amnesiac" and jobs["digits-a"]["method"] == "neggrad-plus", jobs
    assert "inside retraining's intervals" in jobs["digits-b"]["details"]["method_choice"]["reason"]
    # the judged variant's options go with the method; options the method no longer takes fall back
    assert jobs["digits-a"]["method_options"]["steps"] == 3 and jobs["digits-a"]["method_options"]["recovery_steps"] == 2
    assert jobs["digits-a"]["details"]["method_choice"]["options"]["alpha"] == 0.8
    assert not jobs["digits-b"]["method_options"], jobs["digits-b"]
    assert "no longer apply" in jobs["digits-b"]["details"]["method_choice"]["reason"]
    assert work() == 2
    done = (await client.get(f"/requests/{r.json()['id']}/status", headers=requester)).json()
    assert done["status"] == "completed", done
    bad = await client.post(
        "/erasure-requests", json={"subject_id": "subject-0004", "method": "auto", "method_options": {"steps": 3}},
        headers=requester,
    )
    assert bad.status_code == 422 and "auto" in bad.json()["detail"], bad.text
    get_settings.cache_clear()
