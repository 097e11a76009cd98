"""Which webhook URLs may be used: http(s), allowed hosts, and no private address unless allowed (SSRF)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from django.conf import settings
from django.test import override_settings

from bulkwrites.services.notify import WebhookRefused, check_webhook_url, host_allowed


def resolver(*addresses: str):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> Sequence[str]:
        return addresses

    return resolve


def bulkwrites(**values: object) -> override_settings:
    return override_settings(BULKWRITES={**settings.BULKWRITES, **values})


def test_a_public_https_url_is_taken_and_pinned_to_the_checked_address() -> None:
    target = check_webhook_url("https://hooks.example.com/x/y?z=1", resolve=resolver("93.184.216.34"))
    assert (target.host, target.port, str(target.address)) == ("hooks.example.com", 443, "93.184.216.34")
    assert target.path == "/x/y?z=1"
    assert target.host_header == "hooks.example.com"


@pytest.mark.parametrize(
    ("url", "addresses", "why"),
    [
        ("ftp://example.com/x", ["93.184.216.34"], "http:// or https://"),
        ("file:///etc/passwd", [], "http:// or https://"),
        ("http://user:pw@example.com/", ["93.184.216.34"], "user name or password"),
        ("http://169.254.169.254/latest/meta-data/", ["169.254.169.254"], "link-local"),
        ("http://localhost:8000/", ["127.0.0.1"], "loopback"),
        ("http://[::1]/", ["::1"], "loopback"),
        ("http://internal.example.com/", ["10.1.2.3"], "private"),
        ("http://mapped.example.com/", ["::ffff:127.0.0.1"], "127.0.0.1"),
        ("http://metadata.example.com/", ["93.184.216.34", "169.254.169.254"], "169.254.169.254"),
        ("http://0.0.0.0/", ["0.0.0.0"], "private"),
        ("http://example.com:99999/", ["93.184.216.34"], "port"),
    ],
)
def test_refused_urls(url: str, addresses: list[str], why: str) -> None:
    with pytest.raises(WebhookRefused, match=why):
        check_webhook_url(url, resolve=resolver(*addresses))


def test_an_unresolvable_host_is_refused() -> None:
    def fail(host: str, port: int) -> Sequence[str]:
        raise OSError("no such host")

    with pytest.raises(WebhookRefused, match="cannot be resolved"):
        check_webhook_url("https://nowhere.invalid/", resolve=fail)


def test_private_addresses_only_when_a_setting_allows_them() -> None:
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True):
        assert str(check_webhook_url("http://127.0.0.1:9/h", resolve=resolver("127.0.0.1")).address) == "127.0.0.1"


def test_the_host_allow_list() -> None:
    assert host_allowed("hooks.example.com", ["hooks.example.com"])
    assert host_allowed("a.b.example.com", [".example.com"])
    assert not host_allowed("example.com.evil.net", [".example.com"])
    assert not host_allowed("evilexample.com", [".example.com"])
    with bulkwrites(WEBHOOK_ALLOWED_HOSTS=["hooks.example.com"]):
        check_webhook_url("https://hooks.example.com/", resolve=resolver("93.184.216.34"))
        with pytest.raises(WebhookRefused, match=r"only to hooks\.example\.com"):
            check_webhook_url("https://other.example.com/", resolve=resolver("93.184.216.34"))
