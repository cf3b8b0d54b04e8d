"""`/api/subscriptions/{name}/verify` and `/verifications`: compare an index with its source.

POST asks the subscription's worker for a verification (`syncer.operations.verify`) and
returns the job at once (202); its progress and result are polled at
`/verifications/{id}`. Asking needs the change permission, since a repair writes to the
index; reading needs the view permission.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Field, Router, Schema, Status

from console.api import audit
from console.api.auth import caller
from console.api.errors import Conflict, NotFound
from console.api.permissions import CHANGE_SUBSCRIPTION, VIEW_SUBSCRIPTION, requires
from syncer.errors import InvalidKey, VerificationActive, VerificationRefused
from syncer.models import Verification
from syncer.operations import subscriptions
from syncer.operations import verify as verifying

router = Router(tags=["verification"])

LISTED = 20


class VerifyIn(Schema):
    repair: bool = Field(
        False,
        description="Write the rows that are missing or differ, and delete the documents "
        "that should not exist, at the snapshot's position + 1: a newer change always wins.",
    )
    sample: int | None = Field(
        None, ge=1, description="About this many rows (sampled) and documents, not all."
    )
    ids: list[str] | None = Field(
        None,
        max_length=verifying.MAX_IDS,
        description="Only these documents, by id (composite keys joined with `|`).",
    )


class VerificationOut(Schema):
    id: int
    subscription: str
    state: str = Field(description="requested, running, done or failed.")
    repair: bool
    sample: int | None
    ids: int | None = Field(description="How many document ids it is limited to, if any.")
    requested_by: str
    worker: str = Field(description="Who runs or ran it.")
    requested_at: str | None
    started_at: str | None
    finished_at: str | None
    position: int | None = Field(description="The source position the snapshot stands at.")
    position_shown: str
    phase: str = Field(description="waiting (for the subscription), rows, documents, done.")
    progress: dict[str, Any] = Field(
        description="rows (rows and documents read), estimated_rows, percent, "
        "rows_per_second, eta_seconds."
    )
    counts: dict[str, int] = Field(
        description="rows, documents, checked, skipped (changed since the snapshot), "
        "dead_lettered, missing, extra, differs, drifted, repaired, superseded, repair_failed."
    )
    drifted: int
    examples: dict[str, Any] = Field(description="Up to 20 documents of each kind of drift.")
    error: str


@router.post(
    "/{name}/verify",
    response={202: VerificationOut},
    summary="Verify the index against its source",
)
@requires(CHANGE_SUBSCRIPTION)
def verify(request: HttpRequest, name: str, body: VerifyIn) -> Status[dict[str, Any]]:
    """Ask the subscription's worker to compare the index with the source (and repair it):
    the job is returned at once; poll `/verifications/{id}` for its progress."""
    subscription = subscriptions.named(name)
    who = caller(request)
    try:
        verification = verifying.request(
            subscription,
            requested_by=f"{who.user.get_username()}, {who.describe()}",
            repair=body.repair,
            sample=body.sample,
            doc_ids=body.ids,
        )
    except VerificationActive as exc:
        raise Conflict(str(exc)) from exc
    except (VerificationRefused, InvalidKey) as exc:
        raise Conflict(str(exc)) from exc
    what = "verify and repair" if body.repair else "verify"
    audit.record(who, subscription, audit.CHANGE, f"Asked to {what} ({verification.pk})")
    return Status(202, verifying.summary(verification))


@router.get(
    "/{name}/verifications",
    response=list[VerificationOut],
    summary="List a subscription's verifications",
)
@requires(VIEW_SUBSCRIPTION)
def list_verifications(request: HttpRequest, name: str) -> list[dict[str, Any]]:
    """The last 20, newest first."""
    subscription = subscriptions.named(name)
    found = subscription.verifications.select_related("subscription")[:LISTED]
    return [verifying.summary(v) for v in found]


@router.get(
    "/{name}/verifications/{verification_id}",
    response=VerificationOut,
    summary="Read a verification (its progress, or its result)",
)
@requires(VIEW_SUBSCRIPTION)
def get_verification(request: HttpRequest, name: str, verification_id: int) -> dict[str, Any]:
    subscription = subscriptions.named(name)
    try:
        found = subscription.verifications.select_related("subscription").get(pk=verification_id)
    except Verification.DoesNotExist:
        raise NotFound(f"subscription {name!r} has no verification {verification_id}") from None
    return verifying.summary(found)
