"""API tokens in the admin (made for oneself, shown once, revoked), and the webhook field of the job forms."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.test import Client
from django.urls import reverse

from bulkwrites.models import ApiToken, Job
from bulkwrites.services import tokens
from tests.api_helpers import api_client, staff_user

pytestmark = pytest.mark.django_db(transaction=True)

ADD = "/admin/bulkwrites/apitoken/add/"
LIST = "/admin/bulkwrites/apitoken/"


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_staff_user_makes_a_token_for_themselves_and_sees_it_once() -> None:
    ops = staff_user("ops", "add_apitoken", "view_job")
    other = staff_user("other")
    client = logged_in(ops)
    assert client.get(ADD).status_code == 200
    refused = client.post(ADD, {"user": other.pk, "name": "x"})
    assert refused.status_code == 200
    assert "Select a valid choice" in refused.content.decode()
    assert not ApiToken.objects.exists()

    made = client.post(ADD, {"user": ops.pk, "name": "deploy script", "expires_in_days": "7"})
    assert made.status_code == 200
    assert "no-store" in made["Cache-Control"]
    secret = re.search(r'<code id="token-secret"[^>]*>(bwt_[^<]+)</code>', made.content.decode())
    assert secret is not None
    token = ApiToken.objects.get()
    assert (token.user_id, token.name, token.expires_at is not None) == (ops.pk, "deploy script", True)
    assert token.secret_hash == tokens.hash_token(secret[1])
    assert api_client(secret[1]).get("/api/jobs").status_code == 200
    entry = LogEntry.objects.get(action_flag=ADDITION)
    assert entry.change_message == f"token {token.prefix} for ops"

    listing = client.get(LIST).content.decode()
    assert token.prefix in listing
    assert secret[1] not in listing
    assert secret[1] not in client.get(f"{LIST}{token.pk}/change/").content.decode()


def test_others_tokens_stay_hidden_and_revoking_works() -> None:
    ops = staff_user("ops", "add_apitoken", "view_job")
    others = tokens.token_create(user=staff_user("other", "view_job"))
    mine = tokens.token_create(user=ops)
    client = logged_in(ops)
    assert others.token.prefix not in client.get(LIST).content.decode()
    # Selecting another user's token id revokes nothing: the action sees only the user's own.
    client.post(LIST, {"action": "revoke", "_selected_action": [others.token.pk, mine.token.pk]})
    assert ApiToken.objects.get(pk=mine.token.pk).is_revoked
    assert not ApiToken.objects.get(pk=others.token.pk).is_revoked
    assert api_client(mine.secret).get("/api/jobs").status_code == 401
    assert api_client(others.secret).get("/api/jobs").status_code == 200


def test_without_the_permission_no_tokens(admin_user: Any) -> None:
    viewer = staff_user("viewer", "view_job")
    client = logged_in(viewer)
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, {"user": viewer.pk}).status_code == 403
    assert client.get(LIST).status_code == 403
    # A superuser may make one for another user (a Prometheus scraper, say).
    scraper = staff_user("prometheus", "view_metrics")
    assert logged_in(admin_user).post(ADD, {"user": scraper.pk, "name": "scraper"}).status_code == 200
    assert ApiToken.objects.get().user_id == scraper.pk


def test_the_job_form_takes_a_webhook_and_refuses_private_ones(admin_client_tx: Any, make_table: Any) -> None:
    table = make_table()
    url = reverse("admin:bulkwrites_job_new_from_file")
    assert 'name="webhook_url"' in admin_client_tx.get(url).content.decode()

    def upload(webhook: str) -> Any:
        data = io.BytesIO(b"pk\na\n")
        data.name = "in.csv"
        return admin_client_tx.post(
            url, {"file": data, "table_name": table, "operation": "put", "duplicate_policy": "last",
                  "concurrency": 4, "workers": 1, "max_attempts": 3, "batch_size": 25, "webhook_url": webhook},
        )  # fmt: skip

    refused = upload("http://169.254.169.254/latest/meta-data/")
    assert refused.status_code == 200
    assert "link-local" in refused.content.decode()
    assert not Job.objects.exists()
    made = upload("https://93.184.216.34/hooks/abc-secret")
    assert made.status_code == 302
    job = Job.objects.get()
    assert job.webhook_url == "https://93.184.216.34/hooks/abc-secret"
    page = admin_client_tx.get(reverse("admin:bulkwrites_job_change", args=[job.pk])).content.decode()
    assert "POST to 93.184.216.34 when the job ends" in page
    assert "abc-secret" not in page
