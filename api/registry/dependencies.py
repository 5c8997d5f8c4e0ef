"""Path dependencies of the registry: a model name or ``{name}/{version}`` resolved to rows.

The 404s for unknown models and versions come from here, not from each handler; a
``{version}`` is a number or ``latest`` everywhere.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path

from api.auth.dependencies import DbDep, Principal, current_principal
from api.errors import NotFoundError
from api.registry import service
from api.registry.models import Model, ModelVersion

LATEST = "latest"


def valid_model(
    name: Annotated[str, Path(description="Model name")],
    db: DbDep,
    principal: Annotated[Principal, Depends(current_principal)],
) -> Model:
    """The caller's tenant's model ``name``; another tenant's is the same 404 as none."""
    return service.get_or_raise(db=db, name=name, tenant=principal.tenant)


ModelDep = Annotated[Model, Depends(valid_model)]


def parse_version(version: str) -> int | None:
    """``latest`` -> None, a non-negative integer -> itself; anything else is a 422."""
    if version == LATEST:
        return None
    if not (version.isascii() and version.isdigit()) or len(version) > 9:  # "²" is a digit too
        raise HTTPException(422, f"version must be a number or 'latest', got {version!r}")
    return int(version)


def valid_version(
    model: ModelDep,
    db: DbDep,
    version: Annotated[
        str, Path(description="Version number, or `latest`", examples=["0", "latest"])
    ],
) -> ModelVersion:
    number = parse_version(version)
    if number is None:
        row = service.latest_version(db=db, model_id=model.id)
        if row is None:
            raise NotFoundError(
                f"model {model.name!r} has no versions yet (status: {model.status})"
            )
        return row
    row = service.get_version(db=db, model_id=model.id, number=number)
    if row is None:
        latest = service.latest_version(db=db, model_id=model.id)
        known = (
            f"latest is {latest.number}"
            if latest
            else f"it has no versions yet (status: {model.status})"
        )
        raise NotFoundError(f"model {model.name!r} has no version {number}; {known}")
    return row


VersionDep = Annotated[ModelVersion, Depends(valid_version)]
