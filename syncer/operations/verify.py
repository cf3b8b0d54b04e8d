"""Verify a subscription's index against its source, and repair the drift.

A `Verification` row is the job. The admin, the API and the worker's schedule `request`
one; the worker that owns the subscription `run`s it (`syncer.worker.verifier`), and
`manage.py verify` runs one itself. `run` takes the source's snapshot through the kind
(`Kind.verify_snapshot`), connects to the index without creating it, and lets
`syncer.engine.verify.Verifier` compare (and repair) chunk by chunk, writing its
progress on the row about once a second. The rules (what is drift, what is newer than
the snapshot, what a repair writes) are the engine's; the README's "Verifying an index"
explains them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from syncer import text
from syncer.engine.changes import Position
from syncer.engine.verify import Phase, Progress, Scope, Snapshot, Tally, Verifier, key_of_id
from syncer.errors import (
    InvalidKey,
    NotCaughtUp,
    SyncError,
    VerificationActive,
    VerificationRefused,
)
from syncer.models import DeadLetter, Subscription, Verification, doc_id_digest
from syncer.operations.describe import iso_time
from syncer.sinks.opensearch.verified import VerifiedIndex
from syncer.sources.kinds import format_position
from syncer.wiring import build_sink, source_values

log = structlog.get_logger(__name__)

MAX_IDS = 10_000
"""Document ids one verification may be limited to (`--keys`, the API's `ids`)."""
SAVE_EVERY = 1.0
"""Seconds between the progress writes of a running verification."""
ABANDONED_AFTER = timedelta(seconds=60)
"""A running verification whose heartbeat is older was abandoned (its worker stopped)."""
_POLL = 0.5


def refusal(subscription: Subscription) -> str | None:
    """Why `subscription` cannot be verified now, or None."""
    name = subscription.name
    if not subscription.kind.reads_database:
        return (
            f"subscription {name!r} is a push subscription: its documents live only in the "
            "index, so there is no source to verify it against"
        )
    if subscription.kind.verify_snapshot is None:
        return (
            f"subscription {name!r} reads a {subscription.kind.label} source, which "
            "verify cannot read (PostgreSQL and Materialize sources can be verified)"
        )
    if subscription.paused:
        return f"subscription {name!r} is paused: resume it, then verify"
    if subscription.resync_requested_at is not None or (
        subscription.snapshot_mode == "index" and subscription.snapshot_completed_at is None
    ):
        return f"subscription {name!r} is copying its source: verify once the copy is done"
    return None


def request(
    subscription: Subscription,
    *,
    requested_by: str,
    repair: bool = False,
    sample: int | None = None,
    doc_ids: Sequence[str] | None = None,
    run_by: str | None = None,
) -> Verification:
    """A verification for the owning worker to run, or already `run_by` the caller
    (`manage.py verify`, so that no worker takes it too); VerificationRefused says why not."""
    why = refusal(subscription)
    if why:
        raise VerificationRefused(why)
    check_scope(subscription, sample, doc_ids)
    verification = Verification(
        subscription=subscription,
        requested_by=requested_by[:200],
        repair=repair,
        sample=sample,
        doc_ids=list(doc_ids) if doc_ids is not None else None,
    )
    if run_by is not None:
        verification.state, verification.worker = Verification.State.RUNNING, run_by[:200]
        verification.started_at = verification.heartbeat_at = timezone.now()
    try:
        with transaction.atomic():
            verification.save(force_insert=True)
            return verification
    except IntegrityError:
        active = active_for(subscription)
        raise VerificationActive(subscription.name, active.pk if active else 0) from None


def check_scope(
    subscription: Subscription, sample: int | None, doc_ids: Sequence[str] | None
) -> None:
    if sample is not None and doc_ids is not None:
        raise VerificationRefused("give a sample or document ids, not both")
    if sample is not None and sample < 1:
        raise VerificationRefused(f"the sample must be at least 1 row, not {sample}")
    if doc_ids is None:
        return
    if not doc_ids:
        raise VerificationRefused("the list of document ids is empty")
    if len(doc_ids) > MAX_IDS:
        raise VerificationRefused(
            f"{len(doc_ids):,} document ids: at most {MAX_IDS:,} in one verification"
        )
    columns = subscription.key_columns or []
    for value in doc_ids:
        if not isinstance(value, str) or not value:
            raise InvalidKey(f"document id {value!r} is not a non-empty string")
        if len(columns) > 1:
            try:
                key_of_id(value, len(columns))
            except ValueError as exc:
                raise InvalidKey(f"document id {value!r}: {exc} ({', '.join(columns)})") from None


def active_for(subscription: Subscription) -> Verification | None:
    return (
        Verification.objects.filter(subscription=subscription, state__in=Verification.ACTIVE)
        .order_by("-requested_at")
        .first()
    )


def latest_done(subscription: Subscription) -> Verification | None:
    """The last verification that ended, done or failed."""
    return (
        Verification.objects.filter(subscription=subscription, finished_at__isnull=False)
        .order_by("-finished_at")
        .first()
    )


def abandon_stale(now: datetime | None = None) -> int:
    """Fail the running verifications whose worker stopped writing; how many."""
    now = now or timezone.now()
    return Verification.objects.filter(
        state=Verification.State.RUNNING, heartbeat_at__lt=now - ABANDONED_AFTER
    ).update(
        state=Verification.State.FAILED,
        finished_at=now,
        error="abandoned: the worker running it stopped; request it again",
    )


@dataclass
class Running:
    """What `run` tells its caller as it goes (the command prints it)."""

    verification: Verification
    progress: Progress | None = None


OnProgress = Callable[[Running], None]


async def run(
    verification: Verification, *, worker: str, on_progress: OnProgress | None = None
) -> Verification:
    """Run `verification` to its end (done or failed, never raising a SyncError): the
    row holds its progress while it runs and its result after. A requested one is
    claimed first; one claimed by another runner meanwhile is left to it (returned as
    the row now says)."""
    if verification.state == Verification.State.REQUESTED:
        if not await claim(verification, worker):
            await verification.arefresh_from_db()
            return verification
    sub = await Subscription.objects.aget(pk=verification.subscription_id)
    log_ = log.bind(subscription=sub.name, verification=verification.pk)
    log_.info("verification_started", repair=verification.repair, sample=verification.sample)
    saver = _Saver(verification, on_progress)
    snapshot: Snapshot | None = None
    index = VerifiedIndex(build_sink(sub))
    try:
        why = refusal(sub)
        if why:
            raise VerificationRefused(why)
        kind = sub.kind
        assert kind.verify_snapshot is not None
        snapshot = kind.verify_snapshot(source_values(sub), verification.sample)
        await index.open()
        await snapshot.open()
        verification.position = snapshot.position
        ids = tuple(verification.doc_ids) if verification.doc_ids is not None else None
        verifier = Verifier(
            snapshot,
            index,
            Scope(repair=verification.repair, sample=verification.sample, ids=ids),
            caught_up=_caught_up(sub, snapshot),
            dead_lettered=_dead_lettered(sub),
            report=saver.report,
            chunk_rows=int(getattr(settings, "SYNCER_VERIFY_CHUNK_ROWS", 1000)),
        )
        tally = await verifier.run()
        verification.state = Verification.State.DONE
        saver.take(tally)
        log_.info("verification_done", **tally.counts())
    except (SyncError, ValueError) as exc:
        verification.state = Verification.State.FAILED
        verification.error = text.redact(str(exc))
        log_.warning("verification_failed", error=verification.error)
    finally:
        if snapshot is not None:
            await snapshot.close()
        await index.close()
        verification.finished_at = timezone.now()
        await saver.save(final=True)
    return verification


async def claim(verification: Verification, worker: str) -> bool:
    """Mark a requested verification running by `worker`, unless another runner did
    first (one conditional UPDATE); whether this one may run it."""
    now = timezone.now()
    fields = {"state": Verification.State.RUNNING, "worker": worker[:200]}
    claimed = await Verification.objects.filter(
        pk=verification.pk, state=Verification.State.REQUESTED
    ).aupdate(started_at=now, heartbeat_at=now, **fields)
    if claimed:
        verification.state, verification.worker = fields["state"], fields["worker"]
        verification.started_at = verification.heartbeat_at = now
    return bool(claimed)


def _caught_up(sub: Subscription, snapshot: Snapshot) -> Callable[[Position], Any]:
    """Wait until the subscription has written everything up to the snapshot: its
    checkpoint, or what its source confirms (a quiet table's checkpoint stays behind)."""
    patience = float(getattr(settings, "SYNCER_VERIFY_CATCH_UP_SECONDS", 120))

    async def caught_up(at: Position) -> None:
        deadline = time.monotonic() + patience
        while True:
            found = Subscription.objects.filter(pk=sub.pk).values_list("checkpoint", flat=True)
            checkpoint = await found.afirst() or 0
            if checkpoint >= at or await snapshot.written_upto() >= at:
                return
            if time.monotonic() >= deadline:
                shown = format_position(sub.source_kind, snapshot.position)
                raise NotCaughtUp(
                    f"subscription {sub.name!r} has not written everything up to the "
                    f"snapshot (at {shown}) within {patience:.0f} s (its checkpoint is "
                    f"{format_position(sub.source_kind, checkpoint or None)}): is its worker "
                    "running and keeping up? (SYNCER_VERIFY_CATCH_UP_SECONDS)"
                )
            await asyncio.sleep(_POLL)

    return caught_up


def _dead_lettered(sub: Subscription) -> Callable[[Sequence[str]], Any]:
    async def dead_lettered(doc_ids: Sequence[str]) -> Collection[str]:
        digests = [doc_id_digest(i) for i in doc_ids]
        found = DeadLetter.objects.filter(subscription_id=sub.pk, doc_id_digest__in=digests)
        return {doc_id async for doc_id in found.values_list("doc_id", flat=True)}

    return dead_lettered


class _Saver:
    """Writes a running verification's progress on its row, at most every SAVE_EVERY."""

    def __init__(self, verification: Verification, on_progress: OnProgress | None) -> None:
        self.verification = verification
        self._on_progress = on_progress
        self._saved_at = 0.0
        self._phase = ""

    def take(self, tally: Tally) -> None:
        v = self.verification
        v.counts = tally.counts()
        v.drifted = tally.drifted
        v.examples = tally.example_dicts()
        if tally.repair_errors:
            v.examples["repair_errors"] = tally.repair_errors

    async def report(self, progress: Progress) -> None:
        v = self.verification
        v.phase = progress.phase.value
        v.progress = progress.figures.as_dict() if progress.figures else {}
        self.take(progress.tally)
        if self._on_progress is not None:
            self._on_progress(Running(v, progress))
        now = time.monotonic()
        if progress.phase.value != self._phase or now - self._saved_at >= SAVE_EVERY:
            self._phase = progress.phase.value
            await self.save(final=progress.phase is Phase.DONE)

    async def save(self, final: bool = False) -> None:
        v = self.verification
        self._saved_at = time.monotonic()
        v.heartbeat_at = timezone.now()
        fields = ["phase", "progress", "counts", "drifted", "examples", "position"]
        fields.append("heartbeat_at")
        if final:
            fields += ["state", "error", "finished_at"]
        await v.asave(update_fields=fields)
        if final and self._on_progress is not None:
            self._on_progress(Running(v))


def summary(verification: Verification) -> dict[str, Any]:
    """A verification as the API, the admin and the command show it."""
    v = verification
    sub = v.subscription
    return {
        "id": v.pk,
        "subscription": sub.name,
        "state": v.state,
        "repair": v.repair,
        "sample": v.sample,
        "ids": len(v.doc_ids) if v.doc_ids is not None else None,
        "requested_by": v.requested_by,
        "worker": v.worker,
        "requested_at": iso_time(v.requested_at),
        "started_at": iso_time(v.started_at),
        "finished_at": iso_time(v.finished_at),
        "position": v.position,
        "position_shown": format_position(sub.source_kind, v.position),
        "phase": v.phase,
        "progress": v.progress or {},
        "counts": v.counts or {},
        "drifted": v.drifted,
        "examples": v.examples or {},
        "error": v.error,
    }


def latest_by_subscription(names: Collection[str]) -> dict[str, dict[str, Any]]:
    """For each of these subscriptions that has one: its last ended verification's
    figures and whether one runs now (the worker's /metrics)."""
    found: dict[str, dict[str, Any]] = {}
    ended = (
        Verification.objects.filter(subscription__name__in=names, finished_at__isnull=False)
        .order_by("subscription_id", "-finished_at")
        .distinct("subscription_id")
        .values("id", "subscription__name", "state", "finished_at", "counts", "drifted")
    )
    for row in ended:
        counts = row["counts"] or {}
        finished = row["finished_at"]
        found[row["subscription__name"]] = {
            "id": row["id"],
            "finished_at": finished.timestamp() if finished else 0.0,
            "failed": row["state"] == Verification.State.FAILED,
            "checked": counts.get("checked", 0),
            "drifted": row["drifted"],
            "repaired": counts.get("repaired", 0),
            "running": False,
        }
    running = Verification.objects.filter(
        subscription__name__in=names, state=Verification.State.RUNNING
    ).values_list("subscription__name", flat=True)
    for name in running:
        found.setdefault(name, {})["running"] = True
    return found
