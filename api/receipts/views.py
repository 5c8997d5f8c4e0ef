"""Receipt endpoints: a request's signed receipt (scope ``requester``, own tenant only) and
the public key that verifies it (public: a controller fetches it once and verifies offline).

The receipt is served as the exact canonical bytes that were signed, not re-encoded by the
framework: the file a controller saves verifies byte for byte.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Response

from api.auth.dependencies import DbDep
from api.erasure.views import ERRORS, OwnRequest
from api.receipts import service
from api.receipts.keys import SigningKeyError
from api.receipts.schemas import ReceiptKey, SignedReceipt

router = APIRouter(tags=["erasure receipts"])
log = logging.getLogger("lethe.receipts")

KEY_UNUSABLE = {503: {"description": "the service's receipt signing key is not usable (an operator's fix)"}}


def _unusable(exc: SigningKeyError) -> HTTPException:
    """The details (a path, a parse error) go to the log, not to the caller."""
    log.error("receipt signing key unusable: %s", exc)
    return HTTPException(503, "the receipt signing key is not usable; the operator must fix "
                              "LETHE_RECEIPT_SIGNING_KEY or LETHE_RECEIPT_KEY_FILE")


@router.get(
    "/receipt-key",
    response_model=ReceiptKey,
    summary="The public key that verifies erasure receipts (Ed25519)",
    responses=KEY_UNUSABLE,
)
def receipt_key() -> ReceiptKey:
    try:
        return service.public_key()
    except SigningKeyError as exc:
        raise _unusable(exc) from None


@router.get(
    "/requests/{request_id}/receipt",
    summary="The request's signed erasure receipt (grows as the tiers complete)",
    response_class=Response,
    responses={
        200: {"model": SignedReceipt, "description": "canonical JSON, signed with Ed25519",
              "content": {"application/json": {}}},
        **ERRORS,
        **KEY_UNUSABLE,
    },
)
def request_receipt(request: OwnRequest, db: DbDep) -> Response:
    """Any request, whatever its status: `receipt.stage` says how far it got (`received`,
    `approximate`, `exact`, `purged`); `blobs_deleted` lists what the purge deleted and
    `purge.remaining` what it has still to delete. Verify it with `GET /receipt-key` or
    `lethe receipt verify FILE --key KEY`."""
    try:
        body = service.issue(db=db, request=request)
    except SigningKeyError as exc:
        raise _unusable(exc) from None
    return Response(content=body, media_type="application/json")
