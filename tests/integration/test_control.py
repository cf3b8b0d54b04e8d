"""Operator requests on a subscription: written on its row for the owning worker."""

from __future__ import annotations

from syncer.models import Subscription
from syncer.operations import control


def test_pause_and_resume_are_idempotent_and_tell_the_worker(make_subscription):
    sub = make_subscription("orders", "public.orders", validate=False)
    first = control.pause(sub)
    again = control.pause(sub)
    assert (first.changed, again.changed) == (True, False)
    assert sub.paused and sub.control_version == 1
    assert control.resume(sub).changed and not sub.paused and sub.control_version == 2
    assert control.resume(sub).message == "not paused"


def test_resync_and_reset_are_requests_that_stay_until_a_worker_applies_them(make_subscription):
    sub = make_subscription("orders", "public.orders", validate=False)
    result = control.resync(sub, "new_index")
    assert result.changed and "new index" in result.message.lower()
    stored = Subscription.objects.get(pk=sub.pk)
    assert stored.resync_requested_at is not None
    assert stored.resync_mode == Subscription.ResyncMode.NEW_INDEX
    control.reset_checkpoint(sub)
    stored.refresh_from_db()
    assert stored.reset_requested_at is not None and stored.control_version == 2


def test_a_control_request_does_not_count_as_a_config_change(make_subscription):
    sub = make_subscription("orders", "public.orders", validate=False)
    before = Subscription.objects.get(pk=sub.pk).updated_at
    control.pause(sub)
    assert Subscription.objects.get(pk=sub.pk).updated_at == before
