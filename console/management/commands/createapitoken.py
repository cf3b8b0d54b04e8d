"""`createapitoken --user U --name N [--read-only] [--issued-by I]`: issue an API token,
print it once.

Whoever runs this command has the console's database and settings, so it is an operator's
shell action and is not limited like the admin. `--issued-by` names the person asking
for the token: it is recorded as the issuer, and the admin's rule applies to them (only
for oneself, unless a superuser). Without it the token's issuer stays empty, which the
admin shows as issued from the shell.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError, transaction

from console.models import ApiToken, refuse_unless_may_issue


class Command(BaseCommand):
    help = "Create an API token for a staff user and print it (it is never shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, metavar="USERNAME", help="a staff user")
        parser.add_argument("--name", required=True, help="what uses it, e.g. deploy-pipeline")
        parser.add_argument(
            "--read-only", action="store_true", help="the token may read but not change anything"
        )
        parser.add_argument(
            "--issued-by",
            metavar="USERNAME",
            help="who asks for the token, recorded as its issuer: the user themselves or a "
            "superuser",
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
        issuer = None
        if options["issued_by"] is not None:
            issuer = get_user_model().objects.filter(username=options["issued_by"]).first()
            if issuer is None:
                raise CommandError(f"--issued-by: no user named {options['issued_by']!r}")
            try:
                refuse_unless_may_issue(issuer, user)
            except PermissionDenied as exc:
                raise CommandError(f"--issued-by: {exc}") from None
        token = ApiToken(user=user, name=name, read_only=options["read_only"], issued_by=issuer)
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
