"""`/api/health` answers without credentials; `/api/ready` needs a fresh worker heartbeat."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from console.models import ApiToken
from syncer.models import WorkerHeartbeat
from tests.support.users import operator

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> Client:
    staff = operator()
    _, text = ApiToken.issue(staff, "probe", read_only=True)
    return Client(headers={"Authorization": f"Bearer {text}"})


def beat(worker_id: str, age: dt.timedelta) -> WorkerHeartbeat:
    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        worker_id=worker_id, hostname="h", pid=1, started_at=now - age, last_seen_at=now - age
    )


def test_health_answers_without_credentials() -> None:
    response = Client().get("/api/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_not_ready_until_a_worker_has_reported(client: Client) -> None:
    response = client.get("/api/ready")
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert "no worker has ever reported" in response.json()["reason"]


def test_not_ready_when_every_heartbeat_is_stale(client: Client) -> None:
    beat("w1", dt.timedelta(seconds=40))
    response = client.get("/api/ready")
    assert response.status_code == 503
    assert (
        "no worker heartbeat in the last 15 s (the latest is 40 s old)"
        in (response.json()["reason"])
    )


def test_ready_with_a_fresh_heartbeat(client: Client) -> None:
    beat("w1", dt.timedelta(seconds=40))
    beat("w2", dt.timedelta(seconds=2))
    response = client.get("/api/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "reason": "", "workers": 1}


def test_the_openapi_schema_and_docs_are_served() -> None:
    schema = Client().get("/api/openapi.json").json()
    assert "/api/subscriptions/{name}/resync" in schema["paths"]
    assert {"BearerToken", "StaffSession"} <= set(schema["components"]["securitySchemes"])
    docs = Client().get("/api/docs")
    assert docs.status_code == 200
    assert "/api/openapi.json" in docs.content.decode()


def test_an_unknown_endpoint_is_a_json_404(client: Client) -> None:
    for response in (client.get("/api/nope"), client.post("/api/subscriptions/orders/x/y")):
        assert response.status_code == 404
        assert response.json()["detail"].startswith("no such endpoint")
    assert client.get("/api/subscriptions").status_code == 200
