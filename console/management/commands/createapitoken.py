"""`createapitoken --user U --name N [--read-only]`: issue an API token, print it once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError, transaction

from console.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a staff user and print it (it is never shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, metavar="USERNAME", help="a staff user")
        parser.add_argument("--name", required=True, help="what uses it, e.g. deploy-pipeline")
        parser.add_argument(
            "--read-only", action="store_true", help="the token may read but not change anything"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username, name = options["user"], options["name"].strip()
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}; create it with createsuperuser")
        if not user.is_active or not user.is_staff:
            raise CommandError(
                f"user {username!r} is not an active staff user; the API refuses other users"
            )
        token = ApiToken(user=user, name=name, read_only=options["read_only"])
        text = token.assign_key()
        try:
            token.full_clean()
            with transaction.atomic():
                token.save()
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        except IntegrityError:
            raise CommandError(
                f"user {username!r} already has a live token named {name!r}; revoke it or "
                "choose another name"
            ) from None
        kind = "read-only " if token.read_only else ""
        self.stderr.write(
            f"Created {kind}API token {name!r} for {username}. Copy it now: it is stored only "
            "as a hash and cannot be shown again."
        )
        self.stdout.write(text)
