"""`/api/health` answers without credentials; `/api/ready` needs a fresh worker heartbeat;
the schema and its docs need a login."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from syncer.models import WorkerHeartbeat
from tests.support.users import operator, token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> Client:
    return token_client(operator(), "probe", read_only=True)


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


def test_the_openapi_schema_and_docs_are_served_to_a_staff_session_or_a_token() -> None:
    session = Client()
    session.force_login(operator("alice"))
    token = token_client(operator("bob"), "docs", read_only=True)
    for client in (session, token):
        schema = client.get("/api/openapi.json").json()
        assert "/api/subscriptions/{name}/resync" in schema["paths"]
        assert {"BearerToken", "StaffSession"} <= set(schema["components"]["securitySchemes"])
        docs = client.get("/api/docs")
        assert docs.status_code == 200
        assert "/api/openapi.json" in docs.content.decode()


def test_the_openapi_schema_and_docs_need_a_login() -> None:
    anonymous = Client()
    schema = anonymous.get("/api/openapi.json")
    assert schema.status_code == 401
    assert "log in" in schema.json()["detail"]
    assert schema.headers["WWW-Authenticate"].startswith("Bearer")
    assert "paths" not in schema.json()
    docs = anonymous.get("/api/docs")
    assert docs.status_code == 302
    assert docs["Location"] == f"{reverse('admin:login')}?next=/api/docs"

    wrong = Client(headers={"Authorization": "Bearer ssk_00000000_wrong"})
    assert wrong.get("/api/openapi.json").status_code == 401

    clerk = Client()
    clerk.force_login(User.objects.create_user("clerk"))
    refused = clerk.get("/api/openapi.json")
    assert refused.status_code == 403
    assert "staff" in refused.json()["detail"]
    assert clerk.get("/api/docs").status_code == 302


def test_an_unknown_endpoint_is_a_json_404(client: Client) -> None:
    for response in (client.get("/api/nope"), client.post("/api/subscriptions/orders/x/y")):
        assert response.status_code == 404
        assert response.json()["detail"].startswith("no such endpoint")
    assert client.get("/api/subscriptions").status_code == 200
