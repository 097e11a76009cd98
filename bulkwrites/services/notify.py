"""Telling people and systems that a job ended: an email and an optional webhook per job.

The services that make a job end (``running``, ``work``, ``control``) call :func:`job_ended`
after the transition succeeded. It only enqueues an RQ job (after the transaction commits):
the mail server and the webhook receiver are slow or down at times, and the writer must never
wait for them. The worker then runs :func:`send_job_notifications`.

Webhooks are a way for anyone who may create a job to make the server send a request, so the
URL is checked twice, when the job is created and again right before sending (DNS answers
change): http(s) only, the host in ``BULKWRITES_WEBHOOK_ALLOWED_HOSTS`` when that is set, and
every address the host resolves to public unless ``BULKWRITES_WEBHOOK_ALLOW_PRIVATE`` (no
169.254.169.254, no localhost, no 10.x). The request goes to the address that was checked,
never to a second lookup, and redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import SplitResult, urlsplit

import urllib3
from django.core.mail import EmailMessage
from django.db import transaction
from django.urls import reverse
from redis.exceptions import RedisError

from bulkwrites.conf import app_settings
from bulkwrites.dynamo.backoff import Backoff
from bulkwrites.models import Job
from bulkwrites.services import dispatch
from bulkwrites.services.errors import JobError

logger = logging.getLogger(__name__)

WEBHOOK_BACKOFF = Backoff(base=1.0, cap=30.0)
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "bulkwrites-webhook/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(JobError):
    """The webhook URL may not be used; the message says why (without the URL's path or query)."""


def outcome_line(job: Job) -> str:
    """``job 12: succeeded, 5000 succeeded, 0 failed`` — the CLI's last line, the webhook's and the mail's."""
    return f"job {job.pk}: {job.status}, {job.succeeded_items} succeeded, {job.failed_items} failed"


# --- after a job ended ------------------------------------------------------------------


def job_ended(job: Job) -> None:
    """Call after a transition that ends a job (finish, fail, cancel) succeeded.

    The RQ job is enqueued once the surrounding transaction (if any) commits; a Redis that
    does not answer costs the notification, never the caller (a writer finishing a job).
    """
    settings = app_settings()
    wants_mail = bool(settings.notify_emails) or (settings.notify_creator and job.created_by_id is not None)
    if job.webhook_url or wants_mail:
        transaction.on_commit(partial(_enqueue, job.pk), robust=True)


def _enqueue(job_id: int) -> None:
    try:
        dispatch.enqueue_notification(job_id)
    except (RedisError, OSError) as exc:
        logger.warning("job %s: its notifications could not be queued: %s", job_id, exc)


def send_job_notifications(job_id: int, *, sleep: Callable[[float], None] = time.sleep) -> str:
    """What the worker does for :func:`job_ended`: the mail, then the webhook. A line for RQ's result."""
    job = Job.objects.select_related("created_by").filter(pk=job_id).first()
    if job is None:
        return f"job {job_id}: deleted, nothing sent"
    said = [f"job {job_id}"]
    recipients = email_recipients(job)
    if recipients:
        try:
            EmailMessage(mail_subject(job), mail_body(job), to=recipients).send()
        except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors
            logger.warning("job %s: the notification mail was not sent: %s", job.pk, exc)
            said.append(f"mail not sent ({exc.__class__.__name__})")
        else:
            said.append(f"mail to {len(recipients)} address(es)")
    if job.webhook_url:
        result = post_webhook(job.webhook_url, webhook_payload(job), sleep=sleep, job_id=job.pk)
        said.append(f"webhook {result.describe()}")
    return ": ".join([said[0], ", ".join(said[1:]) or "nothing to send"])


def email_recipients(job: Job) -> list[str]:
    settings = app_settings()
    found: list[str] = []
    creator = job.created_by
    if settings.notify_creator and creator is not None and creator.email:
        found.append(creator.email)
    found.extend(settings.notify_emails)
    return list(dict.fromkeys(found))  # once each, in order


def job_url(job: Job) -> str | None:
    base = app_settings().base_url
    return f"{base}{reverse('admin:bulkwrites_job_change', args=[job.pk])}" if base else None


def mail_subject(job: Job) -> str:
    return f"[bulkwrites] job {job.pk} → {job.table_name}: {job.get_status_display()}"


def mail_body(job: Job) -> str:
    lines = [
        outcome_line(job),
        "",
        f"table:     {job.table_name} ({job.operation})",
        f"source:    {job.get_source_kind_display()}: {job.source_name}",
        f"items:     {job.total_items} total, {job.succeeded_items} succeeded, {job.failed_items} failed, "
        f"{job.skipped_items} skipped, {job.pending_items} pending",
    ]
    if job.error_message:
        lines.append(f"error:     {job.error_code}: {job.error_message}")
    url = job_url(job)
    if url:
        lines += ["", url]
    return "\n".join(lines) + "\n"


def webhook_payload(job: Job) -> dict[str, Any]:
    return {
        "event": "job.ended",
        "job": job.pk,
        "status": job.status,
        "outcome": outcome_line(job),
        "table": job.table_name,
        "operation": job.operation,
        "source": f"{job.source_kind}: {job.source_name}",
        "total": job.total_items,
        "succeeded": job.succeeded_items,
        "failed": job.failed_items,
        "skipped": job.skipped_items,
        "pending": job.pending_items,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "url": job_url(job),
    }


# --- webhooks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL: where to connect (an address that passed the checks) and what to ask for."""

    parts: SplitResult
    host: str
    port: int
    address: IPAddress

    @property
    def path(self) -> str:
        return (self.parts.path or "/") + (f"?{self.parts.query}" if self.parts.query else "")

    @property
    def host_header(self) -> str:
        return self.parts.netloc.rsplit("@", 1)[-1]


def check_webhook_url(url: str, *, resolve: Callable[[str, int], Sequence[str]] | None = None) -> WebhookTarget:
    """The URL's target if a webhook may go there; ``WebhookRefused`` with the reason otherwise."""
    settings = app_settings()
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("A webhook URL must start with http:// or https://.")
    if parts.username or parts.password:
        raise WebhookRefused("A webhook URL may not carry a user name or password; put a secret in its path.")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise WebhookRefused("The webhook URL has no host.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookRefused("The webhook URL's port is not a number from 1 to 65535.") from None
    allowed = settings.webhook_allowed_hosts
    if allowed and not host_allowed(host, allowed):
        raise WebhookRefused(
            f"Webhooks may go only to {', '.join(allowed)} (BULKWRITES_WEBHOOK_ALLOWED_HOSTS), not {host}."
        )
    try:
        addresses = [_unmapped(ipaddress.ip_address(a)) for a in (resolve or _resolve)(host, port)]
    except (OSError, UnicodeError):
        raise WebhookRefused(f"The webhook host {host} cannot be resolved.") from None
    if not addresses:
        raise WebhookRefused(f"The webhook host {host} cannot be resolved.")
    if not settings.webhook_allow_private:
        for address in addresses:
            if not address.is_global or address.is_multicast:
                raise WebhookRefused(
                    f"The webhook host {host} is {address}, a private, loopback or link-local address; "
                    "webhooks go to public addresses only unless BULKWRITES_WEBHOOK_ALLOW_PRIVATE is set."
                )
    return WebhookTarget(parts=parts, host=host, port=port, address=addresses[0])


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """``example.com`` allows that host only; ``.example.com`` allows its subdomains."""
    return any(host == entry or (entry.startswith(".") and host.endswith(entry)) for entry in allowed)


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:127.0.0.1`` is 127.0.0.1 to the network: judge the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class WebhookResult:
    delivered: bool
    attempts: int
    status: int | None = None
    error: str = ""

    def describe(self) -> str:
        outcome = f"HTTP {self.status}" if self.status else self.error
        return f"{'delivered' if self.delivered else 'not delivered'} ({outcome}, {self.attempts} attempt(s))"


def post_webhook(
    url: str,
    payload: dict[str, Any],
    *,
    sleep: Callable[[float], None] = time.sleep,
    job_id: int | None = None,
    resolve: Callable[[str, int], Sequence[str]] | None = None,
) -> WebhookResult:
    """POST ``payload`` as JSON; retried with backoff on timeouts, network errors, 429 and 5xx.

    Logs name the host only: a webhook URL often carries a secret in its path.
    """
    settings = app_settings()
    body = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if settings.webhook_secret:
        digest = hmac.new(settings.webhook_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
        headers["X-Bulkwrites-Signature"] = f"sha256={digest}"
    attempts = settings.webhook_attempts
    result = WebhookResult(delivered=False, attempts=0, error="not tried")
    for attempt in range(1, attempts + 1):
        try:
            target = check_webhook_url(url, resolve=resolve)
        except WebhookRefused as exc:
            logger.warning("job %s: webhook refused: %s", job_id, exc)
            return WebhookResult(delivered=False, attempts=attempt - 1, error=str(exc))
        result = _post_once(target, body, headers, timeout=settings.webhook_timeout_seconds, attempt=attempt)
        if result.delivered:
            logger.info("job %s: webhook to %s delivered (HTTP %s)", job_id, target.host, result.status)
            return result
        retryable = result.status is None or result.status in RETRY_STATUSES
        if not retryable or attempt == attempts:
            break
        delay = WEBHOOK_BACKOFF.delay(attempt - 1)
        logger.warning(
            "job %s: webhook to %s failed (%s), attempt %d of %d; again in %.1f s",
            job_id, target.host, result.status or result.error, attempt, attempts, delay,
        )  # fmt: skip
        sleep(delay)
    logger.warning("job %s: webhook not delivered: %s", job_id, result.describe())
    return result


def _post_once(
    target: WebhookTarget, body: bytes, headers: dict[str, str], *, timeout: float, attempt: int
) -> WebhookResult:
    """One request to the checked address, with the URL's host for Host, TLS name and certificate."""
    pool: urllib3.HTTPConnectionPool
    if target.parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            str(target.address),
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            str(target.address), target.port, retries=False, timeout=urllib3.Timeout(total=timeout)
        )
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header},
            redirect=False,
            assert_same_host=False,
            preload_content=False,
        )
        status = response.status
        response.drain_conn()
        response.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        return WebhookResult(delivered=False, attempts=attempt, error=exc.__class__.__name__)
    finally:
        pool.close()
    return WebhookResult(delivered=200 <= status < 300, attempts=attempt, status=status)
