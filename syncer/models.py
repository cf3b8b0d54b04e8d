"""What the console stores: subscriptions and the worker's progress on each."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from syncer.engine.pipeline import Status as engine_status
from syncer.sources import kinds
from syncer.sources.push import queue as push_queue
from syncer.text import redact
from syncer.validators import (
    GATEWAY_ID_MAX,
    index_clash,
    validate_cluster,
    validate_dsn,
    validate_gateway_id,
    validate_index_name,
    validate_json_object,
    validate_key_columns,
)


class SubscriptionQuerySet(models.QuerySet["Subscription"]):
    def named(self, name: str) -> SubscriptionQuerySet:
        """The subscription called `name`, if any. A name with a NUL matches none: no
        subscription has one, and PostgreSQL cannot even be asked about it."""
        return self.none() if "\x00" in name else self.filter(name=name)


class Subscription(models.Model):
    """One sync: a source relation, its key columns, and the OpenSearch index it feeds."""

    class SourceKind(models.TextChoices):
        # The kinds are the registry's (syncer.sources.kinds.KINDS): one list, named there.
        POSTGRES = kinds.POSTGRES.name, kinds.POSTGRES.label
        MATERIALIZE = kinds.MATERIALIZE.name, kinds.MATERIALIZE.label
        PUSH = kinds.PUSH.name, kinds.PUSH.label

    class SourceEnvelope(models.TextChoices):
        DIFF = "diff", "Diff: mz_diff rows, consolidated per key"
        UPSERT = "upsert", "ENVELOPE UPSERT (KEY (...)): Materialize consolidates per key"

    class SnapshotMode(models.TextChoices):
        INDEX = "index", "Index existing rows, then stream"
        DISCARD = "discard", "Stream new changes only"

    class Status(models.TextChoices):
        # The names are the engine's (syncer.engine.pipeline.Status): one list, labelled here.
        STOPPED = engine_status.STOPPED, "Stopped"
        STARTING = engine_status.STARTING, "Starting"
        SNAPSHOTTING = engine_status.SNAPSHOTTING, "Snapshotting"
        STREAMING = engine_status.STREAMING, "Streaming"
        CAUGHT_UP = engine_status.CAUGHT_UP, "Caught up"
        RECONNECTING = engine_status.RECONNECTING, "Reconnecting"
        SINK_UNAVAILABLE = engine_status.SINK_UNAVAILABLE, "Sink unavailable"
        BACKPRESSURE = engine_status.BACKPRESSURE, "Backpressure"
        ERROR = engine_status.ERROR, "Error"
        PAUSED = engine_status.PAUSED, "Paused"

    class ResyncMode(models.TextChoices):
        IN_PLACE = "in_place", "Into the existing index, then remove what the copy lacks"
        NEW_INDEX = "new_index", "Into a new index, then swap the alias to it"

    name = models.SlugField(max_length=63, unique=True)
    enabled = models.BooleanField(default=True)

    source_kind = models.CharField(
        max_length=20, choices=SourceKind.choices, default=SourceKind.POSTGRES
    )
    source_dsn = models.CharField(
        "source DSN",
        max_length=1000,
        blank=True,  # required in clean() for the kinds that read a database (not push)
        validators=[validate_dsn],
        help_text="A PostgreSQL DSN (Materialize speaks the same protocol), or env:VARNAME to "
        "read it from the worker's environment. Push subscriptions have none.",
    )
    # Checked in clean(): what is allowed depends on the source kind.
    relation = models.CharField(
        max_length=10_000,
        blank=True,
        help_text="PostgreSQL: a table, e.g. public.orders. Materialize: a view or table "
        "(name, schema.name or database.schema.name), or a query SELECT ... / WITH ..., "
        "run as SUBSCRIBE (query), without a semicolon. Push subscriptions have none.",
    )
    key_columns = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_key_columns],
        help_text="Columns that identify a document; empty means the primary key "
        "(PostgreSQL only: Materialize sources need them).",
    )
    source_cluster = models.CharField(
        max_length=255,
        blank=True,
        validators=[validate_cluster],
        help_text="Materialize only: the cluster to run SUBSCRIBE on (SET CLUSTER), e.g. "
        "serving. Empty: the connection's default.",
    )
    source_envelope = models.CharField(
        max_length=10,
        choices=SourceEnvelope.choices,
        default=SourceEnvelope.DIFF,
        help_text="Materialize only: how SUBSCRIBE reports changes. PostgreSQL sources keep diff.",
    )

    index_name = models.CharField(max_length=255, validators=[validate_index_name])
    index_settings = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_json_object],
        help_text="Used only when the index is created.",
    )
    index_mappings = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_json_object],
        help_text="Used only when the index is created.",
    )
    adopt_index = models.BooleanField(
        "adopt index",
        default=False,
        help_text="Searchsync marks the indexes it creates, and only those may be swept by "
        "a resync or deleted by a swap to a new index. Tick this to make an existing index "
        "that holds only this subscription's documents searchsync's (it is marked on the "
        "next start). Without it, searchsync writes into such an index but refuses to "
        "remove anything from it.",
    )

    snapshot_mode = models.CharField(
        max_length=10, choices=SnapshotMode.choices, default=SnapshotMode.INDEX
    )
    batch_max_size = models.PositiveIntegerField(default=1000)
    batch_max_age_ms = models.PositiveIntegerField(default=5000)
    backpressure_pause_at = models.PositiveIntegerField(default=5000)
    backpressure_resume_at = models.PositiveIntegerField(default=2500)

    # Set once, when the subscription is created, so renaming it never orphans the
    # replication slot and publication on the source.
    slot_name = models.CharField(max_length=63, unique=True, editable=False)

    # Progress and health, written by the worker.
    checkpoint = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="Highest source position acknowledged by OpenSearch.",
    )
    checkpoint_at = models.DateTimeField(null=True, blank=True, editable=False)
    source_state = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="What the source needs beside the checkpoint to resume exactly there "
        "(Materialize: the rows counted more than once). Saved with the checkpoint.",
    )
    snapshot_completed_at = models.DateTimeField(null=True, blank=True, editable=False)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.STOPPED, editable=False
    )
    status_message = models.TextField(blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)
    status_changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    # What an operator asked of the worker; the owning worker applies it within seconds.
    paused = models.BooleanField(
        default=False,
        help_text="A paused subscription keeps its checkpoint; its worker reads nothing until "
        "it is resumed.",
    )
    resync_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    resync_mode = models.CharField(
        max_length=10, choices=ResyncMode.choices, blank=True, editable=False
    )
    reset_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    control_version = models.PositiveIntegerField(
        default=0,
        editable=False,
        help_text="Bumped by every change a running worker must apply (config, pause, resync).",
    )

    # Published by the owning worker every few seconds, for the admin and the API.
    owner = models.CharField(
        max_length=200, blank=True, editable=False, help_text="The worker running it."
    )
    lag_seconds = models.FloatField(null=True, blank=True, editable=False)
    staleness_seconds = models.FloatField(null=True, blank=True, editable=False)
    throughput = models.FloatField(
        null=True, blank=True, editable=False, help_text="Changes per second over the last minute."
    )
    copy_progress = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="A resumable copy under way: rows, estimated_rows, percent, rows_per_second, "
        "eta_seconds, resumes (published with the lag; null when none runs).",
    )
    stats_at = models.DateTimeField(null=True, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(batch_max_size__gte=1), name="subscription_batch_size_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(backpressure_resume_at__lt=models.F("backpressure_pause_at")),
                name="subscription_resume_below_pause",
            ),
            models.CheckConstraint(
                condition=models.Q(source_envelope__in=["diff", "upsert"]),
                name="subscription_envelope_known",
            ),
            # Said with the other subscription's name by `index_name_problem`. Deferred, so
            # that one apply may swap two subscriptions' indexes.
            models.UniqueConstraint(
                fields=["index_name"],
                name="subscription_index_unique",
                deferrable=models.Deferrable.DEFERRED,
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.slot_name:
            self.slot_name = make_slot_name(self.name)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        errors = self.source_problems()
        if self.backpressure_resume_at >= self.backpressure_pause_at:
            errors["backpressure_resume_at"] = (
                f"resume_at ({self.backpressure_resume_at}) must be below pause_at "
                f"({self.backpressure_pause_at})"
            )
        if self.batch_max_size < 1:
            errors["batch_max_size"] = "must be at least 1"
        if self.backpressure_pause_at < self.batch_max_size:
            errors["backpressure_pause_at"] = (
                f"pause_at ({self.backpressure_pause_at}) must be at least the batch size "
                f"({self.batch_max_size})"
            )
        if errors:
            raise ValidationError(errors)

    def validate_constraints(self, exclude: Collection[str] | None = None) -> None:
        """Django's constraint checks, with the index name's said in an operator's words."""
        excluded = set(exclude or ())
        errors: dict[str, Any] = {}
        try:
            super().validate_constraints(exclude=excluded | {"index_name"})
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        problem = None if "index_name" in excluded else self.index_name_problem()
        if problem:
            errors.setdefault("index_name", []).append(problem)
        if errors:
            raise ValidationError(errors)

    def index_name_problem(self) -> str | None:
        """Why another subscription's index rules this one's out, or None."""
        index = self.index_name
        base = index.rpartition("-")[0]
        others = (
            Subscription.objects.exclude(pk=self.pk)
            .filter(
                models.Q(index_name=index)
                | models.Q(index_name__startswith=f"{index}-")
                | models.Q(index_name=base)
            )
            .order_by("name")
            .values_list("name", "index_name")
        )
        for name, other in others:
            problem = index_clash(index, name, other)
            if problem:
                return problem
        return None

    def source_problems(self) -> dict[str, str]:
        """What is wrong with the source fields for this kind of source, by field.

        Part of `clean`; the config file also runs it alone when other fields are broken.
        """
        problems: dict[str, str] = {}
        kind = kinds.named(self.source_kind)
        if kind is None:
            return problems  # an unknown kind is the source_kind field's error
        if not kind.reads_database:
            return self._pushed_problems(kind)
        if not self.source_dsn:
            problems["source_dsn"] = (
                f"{kind.name} sources need a DSN, e.g. env:SOURCE_DATABASE_URL "
                "(only push subscriptions have none)"
            )
        if not self.relation:
            problems["relation"] = (
                f"{kind.name} sources need a relation, e.g. public.orders "
                "(only push subscriptions have none)"
            )
        problem = kind.relation_problem(self.relation) if self.relation else None
        if problem:
            problems["relation"] = problem
        if kind.needs_key_columns and not self.key_columns:
            problems["key_columns"] = (
                f"{kind.name} sources need key columns: the columns that identify a "
                "document, e.g. [order_id] (a view has no primary key to default to)"
            )
        if "cluster" not in kind.options and self.source_cluster:
            problems["source_cluster"] = "only materialize sources have a cluster; remove it"
        if "envelope" not in kind.options and self.source_envelope == self.SourceEnvelope.UPSERT:
            problems["source_envelope"] = (
                "only materialize sources have an envelope; PostgreSQL sources use diff"
            )
        return problems

    def _pushed_problems(self, kind: kinds.Kind) -> dict[str, str]:
        """A kind whose changes are posted to the API reads nothing: no source fields."""
        given = {
            "source_dsn": bool(self.source_dsn),
            "relation": bool(self.relation),
            "key_columns": bool(self.key_columns),
            "source_cluster": bool(self.source_cluster),
            "source_envelope": self.source_envelope == self.SourceEnvelope.UPSERT,
        }
        return {
            field: f"{kind.name} subscriptions read no database (documents are posted to the "
            "API, each with its id); remove it"
            for field, present in given.items()
            if present
        }

    @property
    def kind(self) -> kinds.Kind:
        """What this subscription's kind of source is (KeyError for a kind there is none of)."""
        return kinds.kind(self.source_kind)

    @property
    def display_dsn(self) -> str:
        """The DSN with its password hidden: the only form ever shown or logged."""
        return redact(self.source_dsn)


def make_slot_name(name: str) -> str:
    """A replication slot / publication name: [a-z0-9_], at most 63, unique per install."""
    base = "".join(c if c.isalnum() else "_" for c in name.lower())[:40]
    return f"searchsync_{base}_{secrets.token_hex(4)}"


def doc_id_digest(doc_id: str) -> str:
    """The SHA-256 (hex) of a document id's UTF-8: a dead letter's identity, whatever its length."""
    return hashlib.sha256(doc_id.encode("utf-8", "surrogatepass")).hexdigest()


if TYPE_CHECKING:
    _CharField = models.CharField[str, str]
else:
    _CharField = models.CharField  # not subscriptable at run time


class DocIdDigestField(_CharField):
    """The digest of the row's `doc_id`, computed on every save and bulk_create."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 64)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def pre_save(self, model_instance: models.Model, add: bool) -> str:
        value = doc_id_digest(model_instance.doc_id)  # type: ignore[attr-defined]
        setattr(model_instance, self.attname, value)
        return value


class DeadLetter(models.Model):
    """A document change OpenSearch rejected for good, or after the retry budget.

    At most one per (subscription, document): a newer failure replaces the entry, and
    a newer successful write of the document removes it (superseded), so a retry can
    never bring back stale data. `payload` and `version` are exactly what was sent.
    The document id is kept whole (an id OpenSearch refuses as too long is a dead
    letter too); entries are told apart by its digest, so no two documents share one.
    """

    class Action(models.TextChoices):
        INDEX = "index", "index"
        DELETE = "delete", "delete"

    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="dead_letters"
    )
    doc_id = models.TextField("document id")
    doc_id_digest = DocIdDigestField(help_text="SHA-256 of the document id.")
    action = models.CharField(max_length=10, choices=Action.choices)
    payload = models.JSONField(
        null=True, blank=True, help_text="The document as it would have been written."
    )
    version = models.BigIntegerField(help_text="The source position the write carried.")
    attempts = models.PositiveIntegerField(default=1)
    error_status = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="HTTP status OpenSearch gave the document."
    )
    error_type = models.CharField(max_length=200, blank=True)
    error_reason = models.TextField(blank=True, help_text="OpenSearch's own words, shortened.")
    first_failed_at = models.DateTimeField()
    last_attempt_at = models.DateTimeField(
        help_text="The last failure: an entry's age, for purges and filters, counts from it."
    )

    class Meta:
        ordering = ["-first_failed_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "doc_id_digest"], name="deadletter_one_per_document"
            ),
        ]
        indexes = [
            models.Index(fields=["first_failed_at"], name="deadletter_first_failed"),
            models.Index(fields=["last_attempt_at"], name="deadletter_last_attempt"),
            models.Index(fields=["subscription", "error_type"], name="deadletter_sub_error"),
        ]

    def __str__(self) -> str:
        return f"{self.doc_id} ({self.action}, version {self.version})"


class CopyLease(models.Model):
    """One key range of a shared copy (SYNCER_COPY_SHARED), which any worker may copy.

    The owner writes a copy's ranges when it begins; a worker's helper picks a free one
    with FOR UPDATE SKIP LOCKED and holds it with a session advisory lock, which
    PostgreSQL drops when that worker dies; `cursor` is how far it got (the next helper
    goes on from there). The copy ends once every range of it is done.
    """

    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="copy_leases"
    )
    copy = models.CharField(
        max_length=200, help_text="Which copy: its request and where the stream stood."
    )
    seq = models.PositiveIntegerField(help_text="The range's place in key order, from 1.")
    after = models.JSONField(
        null=True, blank=True, help_text="Keys above this one; none: from the first."
    )
    upto = models.JSONField(null=True, blank=True, help_text="Up to this key; none: to the last.")
    index = models.CharField(max_length=255, help_text="Where the copy writes.")
    cursor = models.JSONField(null=True, blank=True, help_text="The last key copied.")
    pending = models.JSONField(
        default=list,
        blank=True,
        help_text="Keys sent out and not yet settled: a successor checks them again.",
    )
    rows = models.BigIntegerField(default=0)
    done = models.BooleanField(default=False)
    holder = models.CharField(max_length=200, blank=True, help_text="The worker that took it last.")
    taken_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["subscription", "copy", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "copy", "seq"], name="copylease_one_per_range"
            ),
            models.CheckConstraint(
                condition=models.Q(rows__gte=0), name="copylease_rows_not_negative"
            ),
        ]

    def __str__(self) -> str:
        state = "done" if self.done else "open"
        return f"{self.subscription.name}: copy range {self.seq} ({state}, {self.rows:,} rows)"


class PushSequence(models.Model):
    """A push subscription's last position given out: locked by each append until it
    commits, so positions grow in commit order (syncer.sources.push.queue)."""

    subscription = models.OneToOneField(
        Subscription, on_delete=models.CASCADE, primary_key=True, related_name="push_sequence"
    )
    last_position = models.BigIntegerField(
        help_text="Starts at the creation time in microseconds, so a subscription created "
        "again writes versions above the old one's documents."
    )

    class Meta:
        db_table = push_queue.SEQUENCE_TABLE

    def __str__(self) -> str:
        return f"{self.subscription_id}: {self.last_position}"


class PushedChange(models.Model):
    """One operation posted to a push subscription, kept until its checkpoint passes it.

    Appended by the API (`POST /api/subscriptions/{name}/documents/stream`) only after its
    position is given out under the sequence row's lock; read by the worker in position
    order, and removed (lowest first) once the checkpoint saved covers it.
    """

    class Op(models.TextChoices):
        UPSERT = "upsert", "upsert"
        DELETE = "delete", "delete"

    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="pushed_changes"
    )
    position = models.BigIntegerField()
    op = models.CharField(max_length=6, choices=Op.choices)
    doc_id = models.TextField("document id")
    document = models.JSONField(null=True, blank=True, help_text="The upsert's document.")
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = push_queue.QUEUE_TABLE
        ordering = ["subscription", "position"]
        constraints = [
            # Also the index the worker reads and removes by.
            models.UniqueConstraint(
                fields=["subscription", "position"], name="pushedchange_one_per_position"
            ),
            models.CheckConstraint(
                condition=models.Q(op__in=["upsert", "delete"]), name="pushedchange_op_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.op} {self.doc_id} at {self.position}"


class WorkerHeartbeat(models.Model):
    """A running `runsyncer` process, refreshed every few seconds while it lives.

    `/api/ready` needs one fresher than 15 s; a worker whose heartbeat stops has died,
    and its advisory locks (the subscriptions it owned) went with its connection.
    """

    worker_id = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    subscriptions = models.JSONField(
        default=list, blank=True, help_text="Names of the subscriptions it runs now."
    )

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return self.worker_id


class LiveSubscription(models.Model):
    """A client's standing request for the changes of one subscription that match a filter.

    Owned by the API user who registered it and the `gateway_id` the client keeps across
    its restarts, so a gateway that comes back finds its subscriptions. It lives until
    `expires_at`; each heartbeat moves that to now + LIVE_SUBSCRIPTION_TTL_SECONDS, and
    the expiry (`manage.py livesubs expire`) deletes the rows past it. Registered, renewed
    and deleted through `syncer.operations.live_subscriptions` only: the quotas are
    checked there.
    """

    class Delivery(models.TextChoices):
        WEBSOCKET = "websocket", "Websocket (/ws/live/)"
        NATS = "nats", "NATS JetStream (events.{gateway_id}.{id})"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="live_subscriptions",
        help_text="The user of the API token that registered it.",
    )
    gateway_id = models.CharField(
        "gateway id",
        max_length=GATEWAY_ID_MAX,
        validators=[validate_gateway_id],
        help_text="The caller's own name for itself, the same across its restarts.",
    )
    subscription = models.ForeignKey(
        Subscription,
        on_delete=models.CASCADE,
        related_name="live_subscriptions",
        help_text="The sync subscription whose changes it watches.",
    )
    filter = models.TextField(help_text="The CEL expression a change must match.")
    pinned = models.BooleanField(
        default=True,
        editable=False,
        help_text="Whether the filter is indexed: it pins a value (a top-level "
        "`doc.field == literal` or `in [...]`) or bounds a number (`doc.field > 5`). An "
        "unpinned one is evaluated on every change, so a subscription may hold only a few "
        "(LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION).",
    )
    delivery = models.CharField(max_length=10, choices=Delivery.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(
        help_text="Removed after this unless a heartbeat renews it first."
    )

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name = "live subscription"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(delivery__in=["websocket", "nats"]),
                name="livesubscription_delivery_known",
            ),
            # validate_gateway_id's rule, kept by the database too: it is a NATS subject token.
            models.CheckConstraint(
                condition=models.Q(gateway_id__regex=r"^[A-Za-z0-9_-]+$"),
                name="livesubscription_gateway_id_token",
            ),
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="livesubscription_expires_after_created",
            ),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="livesubscription_expires"),
            # Lists and heartbeats by gateway, in the order the cursor pages them.
            models.Index(
                fields=["owner", "gateway_id", "created_at", "id"],
                name="livesubscription_gateway",
            ),
            # The unpinned quota counts (subscription, pinned=False).
            models.Index(fields=["subscription", "pinned"], name="livesubscription_sub"),
        ]

    def __str__(self) -> str:
        return f"{self.gateway_id}/{self.id}"


class LiveSubscriptionCount(models.Model):
    """A console-wide running total of live-subscription registrations, by event.

    Registrations happen in the console's processes (API, websocket), several of them,
    while the worker serves /metrics: the totals are kept here, one row per (event,
    quota), each added to with one UPDATE per request, and the worker exports them as
    Prometheus counters. Written through `syncer.operations.live_subscriptions` only.
    """

    class Event(models.TextChoices):
        REGISTERED = "registered", "Registered"
        REFUSED = "refused", "Refused by a quota"

    event = models.CharField(max_length=16, choices=Event.choices)
    quota = models.CharField(
        max_length=16,
        blank=True,
        help_text="For refused: the quota that refused (owner, global, unpinned); else empty.",
    )
    total = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "live subscription count"
        constraints = [
            models.UniqueConstraint(fields=["event", "quota"], name="livesubscriptioncount_unique")
        ]

    def __str__(self) -> str:
        return f"{self.event}{'/' + self.quota if self.quota else ''}: {self.total}"


class Verification(models.Model):
    """One comparison of a subscription's source with its index (`syncer.operations.verify`).

    Requested from the admin, the API or the worker's schedule (`runsyncer --verify-every`)
    and run by the worker that owns the subscription; `manage.py verify` runs one itself.
    The row is the job: its progress is written as it runs, its counts and a few
    examples of each kind of drift when it ends.
    """

    class State(models.TextChoices):
        REQUESTED = "requested", "Requested"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    ACTIVE = (State.REQUESTED, State.RUNNING)

    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="verifications"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.REQUESTED)
    repair = models.BooleanField(default=False, help_text="Write what differs.")
    sample = models.PositiveIntegerField(
        null=True, blank=True, help_text="About this many rows and documents; empty: all."
    )
    doc_ids = models.JSONField(
        null=True, blank=True, help_text="Only these documents (by id); empty: all."
    )
    requested_by = models.CharField(
        max_length=200, help_text="Who asked: a user, a token, 'schedule' or 'command'."
    )
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="Who runs it.")
    position = models.BigIntegerField(
        null=True, blank=True, help_text="The source position the snapshot stands at."
    )
    phase = models.CharField(max_length=12, blank=True)
    progress = models.JSONField(
        default=dict, blank=True, help_text="Percent, rows/s and time left, as last written."
    )
    counts = models.JSONField(
        default=dict, blank=True, help_text="Rows, documents, checked, skipped, drift, repairs."
    )
    drifted = models.BigIntegerField(
        default=0, help_text="Missing, extra and differing documents found."
    )
    examples = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Written as it runs: a stale one was abandoned."
    )

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription"],
                condition=models.Q(state__in=["requested", "running"]),
                name="verification_one_active_per_subscription",
            ),
        ]
        indexes = [
            models.Index(fields=["subscription", "-finished_at"], name="verification_latest"),
        ]

    def __str__(self) -> str:
        what = "verify and repair" if self.repair else "verify"
        return f"{what} {self.subscription_id} ({self.state}, {self.requested_at:%Y-%m-%d %H:%M})"
