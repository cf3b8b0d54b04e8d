"""Property-based requests from the OpenAPI schema: no endpoint answers with a 5xx.

schemathesis generates valid (positive) and invalid (negative) requests for every
operation of /api/openapi.json and sends them, with a valid API token, to the Django
application in-process (WSGI), against the real test database and an osmem-server for
the dead-letter retries. The example count is bounded to keep the test under a minute.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from console.models import ApiToken
from syncer.models import DeadLetter, LiveSubscription, WorkerHeartbeat
from tests.support.factories import entry, subscription
from tests.support.users import operator

# Committed transactions, as in production: the WSGI handler closes connections after
# each request, which would end a test-wide transaction.
pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES_PER_OPERATION = 8


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """The push endpoint's body, NDJSON: a generated string goes as it is, lines or not."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture
def token(opensearch_url: str) -> str:
    staff = operator()
    _, text = ApiToken.issue(staff, "schemathesis")
    orders = subscription("orders")
    # A DSN from an unset variable: a generated DELETE can never reach out to a host.
    orders.source_dsn = "env:SCHEMATHESIS_SOURCE_URL"
    orders.save()
    for i in range(3):
        entry(orders, f"o{i}", payload={"total": i}, age=dt.timedelta(hours=i))
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        worker_id="w1",
        hostname="h",
        pid=1,
        started_at=now,
        last_seen_at=now + dt.timedelta(hours=1),
    )
    LiveSubscription.objects.create(
        owner=staff,
        gateway_id="gw-1",
        subscription=orders,
        filter="true",
        delivery="nats",
        expires_at=now + dt.timedelta(hours=1),
    )
    return text


def test_no_generated_request_gets_a_5xx(token: str) -> None:
    existing = {
        "name": "orders",
        "entry_id": DeadLetter.objects.values_list("pk", flat=True)[0],
        "live_subscription_id": str(LiveSubscription.objects.values_list("pk", flat=True)[0]),
    }
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_wsgi(
        "/api/openapi.json", get_wsgi_application(), headers=headers
    )
    server_errors: list[str] = []
    operations = 0
    no_invalid_input: list[str] = []

    # Destructive operations last, so the others still find the subscription and entries.
    every = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the API's schema is invalid: {result}"
        every.append(result.ok())
    every.sort(key=lambda op: op.method.upper() == "DELETE" or op.path.endswith("/purge"))
    for operation in every:
        operations += 1
        # Generated path values rarely name anything that exists: also aim at real ones.
        known = {k: v for k, v in existing.items() if k in operation.path}
        runs: list[tuple[GenerationMode, dict[str, Any]]] = [
            (GenerationMode.POSITIVE, {}),
            (GenerationMode.NEGATIVE, {}),
        ]
        if known:
            runs.append((GenerationMode.POSITIVE, known))
        for mode, path_parameters in runs:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(
                case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            )
            def send(case: Any) -> None:
                response = case.call(headers=headers)
                if response.status_code >= 500:
                    server_errors.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:200]}"
                    )

            try:
                send()
            except Unsatisfiable:
                # An operation without any input (GET /api/health) has no invalid request.
                assert mode is GenerationMode.NEGATIVE, operation.label
                no_invalid_input.append(operation.label)

    assert operations >= 15  # every endpoint of the API was exercised
    assert server_errors == []
    assert len(no_invalid_input) < operations // 2
