"""A lean HTTP/1.1 transport for botocore: the writing client's calls without urllib3's per-call work.

botocore builds, signs and parses each call (its serializers, SigV4 signer, parsers and errors
stay as they are); only the last step, sending the signed request and reading the answer, is done
here, over keep-alive sockets. urllib3 and ``http.client`` spend about a third of a
BatchWriteItem call's CPU on that step (header validation, an ``email`` parser per response,
pool and URL bookkeeping, a proxy lookup per call), under the GIL the worker's 16 call threads
share. The request goes out in one ``sendall``; the status line and headers are read with a
plain split.

:class:`LeanSession` wraps botocore's own ``URLLib3Session`` and hands it every request this
transport does not serve: a proxy for the endpoint, a client certificate, streamed bodies or
answers. Connection failures raise botocore's own exceptions, as urllib3's would have been
translated (``EndpointConnectionError``, ``ConnectTimeoutError``, ``ReadTimeoutError``,
``ConnectionClosedError``, ``SSLError``), so the writer classifies them exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from botocore.awsrequest import AWSResponse
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import create_urllib3_context, get_cert_path
from urllib3 import HTTPHeaderDict

MAX_HEADER_BYTES = 64 * 1024  # an answer's status line and headers; DynamoDB's are well under 1 KB
READ_CHUNK = 64 * 1024


class _Origin:
    """Where requests go (scheme, host, port) and what is needed to connect there."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        default_port = 443 if self.scheme == "https" else 80
        self.port = parts.port or default_port
        # The Host header as botocore signs it (auth._host_from_url) and http.client sends it.
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if self.port == default_port else f"{name}:{self.port}"


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):  # closing a broken socket
            self.sock.close()

    def dropped(self) -> bool:
        """An idle connection the server closed (or wrote to) cannot carry a request."""
        if self.buffer:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class _Body:
    """What ``AWSResponse.content`` reads: the body, already received."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield self.data

    def read(self, *_: Any, **__: Any) -> bytes:
        data, self.data = self.data, b""
        return data


class LeanSession:
    """botocore's HTTP session interface (``send``, ``close``) over keep-alive sockets.

    ``fallback`` is the client's own ``URLLib3Session``: its timeouts, socket options, pool size
    and certificate settings are used here, and requests this transport does not serve go to it.
    """

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        timeout = fallback._timeout
        if isinstance(timeout, (int, float)):
            self.connect_timeout = self.read_timeout = float(timeout)
        else:  # urllib3's Timeout
            self.connect_timeout = float(timeout.connect_timeout)
            self.read_timeout = float(timeout.read_timeout)
        self.socket_options = list(fallback._socket_options or ())
        self.max_idle = max(1, int(fallback._max_pool_connections))
        self.verify = fallback._verify
        self.has_client_cert = bool(fallback._cert_file)
        self._origins: dict[str, _Origin | None] = {}  # url prefix -> origin, None: the fallback's
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    # --- botocore's interface -----------------------------------------------------------

    def send(self, request: Any) -> AWSResponse:
        origin = self._origin(request.url)
        body = request.body
        if origin is None or request.stream_output or not isinstance(body, (bytes, bytearray, type(None))):
            return self.fallback.send(request)
        head = self._head(request, origin, body)
        url = request.url
        connection = self._take(origin, url)
        try:
            try:
                connection.sock.sendall(head + body if body else head)
                status, headers, data, reusable = self._read_response(connection, request.method)
            except TimeoutError as exc:
                raise ReadTimeoutError(endpoint_url=url, error=exc) from exc
            except (OSError, ValueError, EOFError) as exc:
                raise ConnectionClosedError(endpoint_url=url, request=request, error=exc) from exc
        except BaseException:
            connection.close()
            raise
        if reusable:
            self._give_back(origin, connection)
        else:
            connection.close()
        response = AWSResponse(url, status, headers, _Body(data))
        response.content  # noqa: B018 - read now, as botocore's session does for non-streamed answers
        return response

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()
        self.fallback.close()

    # --- connections --------------------------------------------------------------------

    def _origin(self, url: str) -> _Origin | None:
        end = url.find("/", 8)  # the end of "scheme://host:port", wherever the path starts
        prefix = url if end < 0 else url[:end]
        try:
            return self._origins[prefix]
        except KeyError:
            pass
        origin: _Origin | None = _Origin(url)
        assert origin is not None
        if (
            origin.scheme not in ("http", "https")
            or not origin.host
            or self.fallback._proxy_config.proxy_url_for(url)
            or (origin.scheme == "https" and self.has_client_cert)
        ):
            origin = None
        self._origins[prefix] = origin
        return origin

    def _take(self, origin: _Origin, url: str) -> _Connection:
        key = (origin.scheme, origin.host, origin.port)
        while True:
            with self._lock:
                idle = self._idle.get(key)
                connection = idle.pop() if idle else None
            if connection is None:
                return self._connect(origin, url)
            if not connection.dropped():
                return connection
            connection.close()

    def _give_back(self, origin: _Origin, connection: _Connection) -> None:
        key = (origin.scheme, origin.host, origin.port)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(connection)
                return
        connection.close()

    def _connect(self, origin: _Origin, url: str) -> _Connection:
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout=self.connect_timeout)
        except TimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=url, error=exc) from exc
        except OSError as exc:
            raise EndpointConnectionError(endpoint_url=url, error=exc) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in self.socket_options:
                sock.setsockopt(*option)
            if origin.scheme == "https":
                sock = self._tls_context().wrap_socket(sock, server_hostname=origin.host)
            sock.settimeout(self.read_timeout)
        except ssl.SSLError as exc:
            sock.close()
            raise SSLError(endpoint_url=url, error=exc) from exc
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeoutError(endpoint_url=url, error=exc) from exc
        except OSError as exc:
            sock.close()
            raise EndpointConnectionError(endpoint_url=url, error=exc) from exc
        return _Connection(sock)

    def _tls_context(self) -> ssl.SSLContext:
        """As botocore's session verifies: its CA bundle (or ``verify``'s file or folder), or none."""
        if self._tls is None:
            context = create_urllib3_context()
            if self.verify:
                context.verify_mode = ssl.CERT_REQUIRED
                context.check_hostname = True
                path = get_cert_path(self.verify)
                if path is True or path is None:
                    context.load_default_certs()
                elif os.path.isdir(str(path)):
                    context.load_verify_locations(capath=str(path))
                else:
                    context.load_verify_locations(cafile=str(path))
            else:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls = context
        return self._tls

    # --- the wire -----------------------------------------------------------------------

    @staticmethod
    def _head(request: Any, origin: _Origin, body: bytes | bytearray | None) -> bytes:
        parts = urlsplit(request.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{request.method} {target} HTTP/1.1"]
        names = set()
        for name, value in request.headers.items():
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if "\r" in text or "\n" in text or "\r" in name or "\n" in name:
                raise ValueError(f"invalid header {name!r}")
            lines.append(f"{name}: {text}")
            names.add(name.lower())
        if "host" not in names:
            lines.append(f"Host: {origin.host_header}")
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")  # as http.client sends it
        if "content-length" not in names and "transfer-encoding" not in names and (body or request.method == "POST"):
            lines.append(f"Content-Length: {len(body or b'')}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def _read_response(self, connection: _Connection, method: str) -> tuple[int, HTTPHeaderDict, bytes, bool]:
        while True:
            status, version, headers = self._read_head(connection)
            if not 100 <= status < 200:  # interim answers (100 Continue) carry nothing
                break
        connection_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in connection_tokens and (version != "HTTP/1.0" or "keep-alive" in connection_tokens)
        if method == "HEAD" or status in (204, 304):
            return status, headers, b"", keep_alive
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, headers, self._read_chunked(connection), keep_alive
        length = headers.get("content-length")
        if length is not None:
            return status, headers, self._read_exactly(connection, int(length)), keep_alive
        return status, headers, self._read_to_close(connection), False

    def _read_head(self, connection: _Connection) -> tuple[int, str, HTTPHeaderDict]:
        buffer = connection.buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buffer) > MAX_HEADER_BYTES:
                raise ValueError("the answer's headers are too long")
            chunk = connection.sock.recv(READ_CHUNK)
            if not chunk:
                raise EOFError("the server closed the connection before answering")
            buffer += chunk
        head, connection.buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
        status_line, *header_lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/"):
            raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(rest[:3])
        headers = HTTPHeaderDict()
        for line in header_lines:
            name, colon, value = line.partition(":")
            if colon:
                headers.add(name.strip(), value.strip())
        return status, version, headers

    @staticmethod
    def _read_exactly(connection: _Connection, size: int) -> bytes:
        data = connection.buffer
        if len(data) >= size:
            connection.buffer = data[size:]
            return data[:size]
        parts = [data]
        have = len(data)
        while have < size:
            chunk = connection.sock.recv(max(READ_CHUNK, size - have))
            if not chunk:
                raise EOFError("the server closed the connection in the middle of an answer")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        connection.buffer = data[size:]
        return data[:size]

    def _read_line(self, connection: _Connection) -> bytes:
        while b"\r\n" not in connection.buffer:
            if len(connection.buffer) > MAX_HEADER_BYTES:
                raise ValueError("a chunk header is too long")
            chunk = connection.sock.recv(READ_CHUNK)
            if not chunk:
                raise EOFError("the server closed the connection in the middle of an answer")
            connection.buffer += chunk
        line, _, connection.buffer = connection.buffer.partition(b"\r\n")
        return line

    def _read_chunked(self, connection: _Connection) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self._read_line(connection).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._read_line(connection):  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            parts.append(self._read_exactly(connection, size))
            if self._read_exactly(connection, 2) != b"\r\n":
                raise ValueError("a malformed chunk")

    @staticmethod
    def _read_to_close(connection: _Connection) -> bytes:
        parts = [connection.buffer]
        connection.buffer = b""
        while chunk := connection.sock.recv(READ_CHUNK):
            parts.append(chunk)
        return b"".join(parts)


def use_lean_transport(client: Any) -> None:
    """Send a botocore client's requests through :class:`LeanSession` (its own session as fallback).

    The client's endpoint object is private to botocore; a client without one is left as it is.
    """
    endpoint: Any = getattr(client, "_endpoint", None)
    session = getattr(endpoint, "http_session", None)
    if session is None or isinstance(session, LeanSession) or not hasattr(session, "_proxy_config"):
        return
    endpoint.http_session = LeanSession(session)
