"""Connection strings fit for display and messages that never carry a password."""

import contextlib
import getpass
import os
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bulkwrites.sources.postgres.errors import one_line

SECRET_KEYWORDS = ("password", "sslpassword")  # connection options whose value is a secret
REDACTED = "***"

_URL_USERINFO = re.compile(r"^(\s*postgres(?:ql)?://)([^@/]*)@", re.IGNORECASE)
_URL_SECRET_PARAM = re.compile(r"([?&](?:password|sslpassword)=)([^&#]*)", re.IGNORECASE)
_KV_SECRET = re.compile(r"((?:^|\s)(?:password|sslpassword)\s*=?\s*)('(?:[^'\\]|\\.)*'?|\S*)")


def _is_url(dsn: str) -> bool:
    return bool(re.match(r"\s*postgres(?:ql)?://", dsn, re.IGNORECASE))


def secrets_in(dsn: str) -> set[str]:
    """Every spelling of the secrets of ``dsn`` (and of $PGPASSWORD) that a message could echo."""
    found: set[str] = set()
    with_raw: list[str] = []
    if _is_url(dsn):
        m = _URL_USERINFO.match(dsn)
        if m and ":" in m.group(2):
            with_raw.append(m.group(2).split(":", 1)[1])
        with_raw.extend(m.group(2) for m in _URL_SECRET_PARAM.finditer(dsn))
    else:
        for m in _KV_SECRET.finditer(dsn):
            value = m.group(2)
            with_raw.append(value)
            if value.startswith("'"):
                with_raw.append(re.sub(r"\\(.)", r"\1", value.strip("'")))
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}
    with_raw.extend(str(params[k]) for k in SECRET_KEYWORDS if params.get(k))
    if os.environ.get("PGPASSWORD"):
        with_raw.append(os.environ["PGPASSWORD"])
    for value in with_raw:
        for spelling in (value, unquote(value), quote(value, safe=""), quote(value)):
            if spelling:
                found.add(spelling)
    return found


def scrub(text: str, secret_values: Iterable[str]) -> str:
    for value in sorted(secret_values, key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(value, REDACTED)
    return text


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every password (URL userinfo, ``password=``, ``sslpassword=``) replaced by ``***``."""
    if _is_url(dsn):
        redacted = _URL_USERINFO.sub(
            lambda m: (
                m.group(1) + (m.group(2).split(":", 1)[0] + ":" + REDACTED if ":" in m.group(2) else m.group(2)) + "@"
            ),
            dsn,
        )
        redacted = _URL_SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, redacted)
    else:
        redacted = _KV_SECRET.sub(lambda m: m.group(1) + REDACTED, dsn)
    # Whatever spelling survived the patterns (odd quoting): replace it literally.
    leftovers = {s for s in secrets_in(dsn) if s != REDACTED and s in redacted}
    return scrub(redacted, leftovers)


def _conninfo_keywords() -> frozenset[str]:
    return frozenset(opt.keyword.decode() for opt in psycopg.pq.Conninfo.get_defaults())


# A quoted fragment of a libpq/psycopg message kept as is when it is one of these shapes.
_SAFE_FRAGMENT = re.compile(r"=|[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*|/[^\s]*/\.s\.PGSQL\.[0-9]+")
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^'\s]*)'")


def safe_message(text: str, secret_values: set[str], allowed: Iterable[str]) -> str:
    """One line of ``text`` with the secrets scrubbed and unknown quoted fragments replaced by ``...``.

    libpq quotes pieces of the connection string in its messages (``invalid percent-encoded token:
    "S3cret%zz"``, ``invalid integer value "..." for connection option "port"``): a secret typed in
    the wrong place, where no pattern finds it, could be one of them. Only option names, the
    non-secret parameters (host, user, database...), addresses and socket paths stay readable.
    """
    keep = set(allowed) | _conninfo_keywords()

    def fragment(m: re.Match[str]) -> str:
        inner = m.group(1) if m.group(1) is not None else m.group(2)
        if inner in keep or _SAFE_FRAGMENT.fullmatch(inner):
            return m.group(0)
        return m.group(0)[0] + "..." + m.group(0)[0]

    text = scrub(one_line(text), secret_values)
    return _QUOTED.sub(fragment, text)


def public_params(dsn: str) -> set[str]:
    """The parameters of ``dsn`` a message may show: host, address, database and user names (ports are numbers)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}
    values = {str(params[k]) for k in ("host", "hostaddr", "dbname", "user") if params.get(k)}
    values |= {os.environ[k] for k in ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGUSER") if os.environ.get(k)}
    with contextlib.suppress(Exception):
        values.add(getpass.getuser())  # libpq's default user name
    return {piece for value in values for piece in value.split(",") if piece} - {""}
