"""A model's exact tier over HTTP: force a compaction (admin), read the lineage's health
(registry scope), change the erasure policy (admin, audited)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status

from api.auth.dependencies import AdminDep, DbDep, require_scope
from api.compaction import service
from api.compaction.schemas import CompactionOut, ModelHealth, PolicyPatch
from api.registry.dependencies import ModelDep
from unlearning_core.compaction import CompactionPolicy, Trigger

router = APIRouter(
    prefix="/models", tags=["compaction"], dependencies=[Depends(require_scope("registry"))]
)

ERRORS = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key lacks the scope (admin to change anything)"},
    404: {"description": "Unknown model"},
}


@router.post(
    "/{name}/compact",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CompactionOut,
    summary="Queue a compaction now (admin): retrain without every erased sample, publish an exact version",
    responses={**ERRORS, 409: {"description": "SISA model (exact already), not ready, or a compaction is under way"}},
)
def compact_model(principal: AdminDep, model: ModelDep, db: DbDep, response: Response) -> CompactionOut:
    # the scope is checked before the model is looked up: a 403 says nothing about the model
    run = service.request_compaction(db=db, model=model, trigger=Trigger.MANUAL, actor=principal.name)
    db.commit()
    response.headers["Location"] = f"/models/{model.name}/health"
    return CompactionOut.model_validate(service.compaction_out(model=model, run=run))


@router.get(
    "/{name}/health",
    response_model=ModelHealth,
    summary="The lineage's health: versions since compaction, steps subtracted, accuracy drift, "
    "requests waiting for exact, the next trigger, the last compaction",
    responses=ERRORS,
)
def model_health(model: ModelDep, db: DbDep) -> ModelHealth:
    return ModelHealth.model_validate(service.health(db=db, model=model))


@router.patch(
    "/{name}/policy",
    response_model=CompactionPolicy,
    summary="Change the model's erasure policy (admin; audited model.policy_changed)",
    responses={**ERRORS, 422: {"description": "A field out of bounds or unknown (named)"}},
)
def change_policy(body: PolicyPatch, principal: AdminDep, model: ModelDep, db: DbDep) -> CompactionPolicy:
    after = service.set_policy(db=db, model=model, changes=body.changes(), actor=principal.name)
    return CompactionPolicy.model_validate(after)
