"""The lean transport must answer as botocore's urllib3 session does, errors included.

A small HTTP server on loopback, in a thread, answers each request the way a test scripts it:
a plain answer, a chunked one, one that closes the connection, none at all, or too late.
"""

from __future__ import annotations

import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSRequest
from botocore.exceptions import (
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import URLLib3Session

from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo.http import LeanSession

Answer = Callable[[socket.socket, bytes, bytes], bool]  # (socket, head, body) -> keep the connection


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}/"


class Handler(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        sock = self.request
        if self.server.tls is not None:
            try:
                sock = self.server.tls.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError):
                return
        self.server.connections += 1
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                buffer += sock.recv(65536)
            body, buffer = buffer[:length], buffer[length:]
            self.server.heads.append(head)
            self.server.bodies.append(body)
            if not self.server.answer(sock, head, body):
                sock.close()
                return


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(answer: Answer, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(answer, tls)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def ok(body: bytes = b'{"UnprocessedItems":{}}', *, extra: str = "") -> Answer:
    def answer(sock: socket.socket, head: bytes, _body: bytes) -> bool:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nx-amzn-RequestId: abc\r\nContent-Type: application/x-amz-json-1.0\r\n"
            + extra.encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        return "Connection: close" not in extra

    return answer


def session(**settings: Any) -> LeanSession:
    settings.setdefault("timeout", (2, 2))
    return LeanSession(URLLib3Session(**settings))


def post(url: str, body: bytes = b'{"RequestItems":{}}') -> Any:
    headers = {"X-Amz-Target": "DynamoDB_20120810.BatchWriteItem", "Authorization": "AWS4-HMAC-SHA256 test"}
    return AWSRequest(method="POST", url=url, data=body, headers=headers).prepare()


def test_answers_come_back_as_botocore_reads_them_over_one_kept_connection(serve: Callable[..., Server]) -> None:
    server = serve(ok())
    lean = session()

    responses = [lean.send(post(server.url, body=f'{{"n":{n}}}'.encode())) for n in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert responses[0].content == b'{"UnprocessedItems":{}}'
    assert responses[0].headers["X-AMZN-REQUESTID"] == "abc"  # case-insensitive, as urllib3's
    assert server.connections == 1
    assert server.bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    port = server.server_address[1]
    assert f"Host: 127.0.0.1:{port}".encode() in server.heads[0].split(b"\r\n")
    assert b"Content-Length: 7" in server.heads[0].split(b"\r\n")
    assert server.heads[0].startswith(b"POST / HTTP/1.1\r\n")


def test_a_chunked_answer_is_read_whole(serve: Callable[..., Server]) -> None:
    def chunked(sock: socket.socket, head: bytes, body: bytes) -> bool:
        sock.sendall(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        return True

    server = serve(chunked)
    lean = session()

    first = lean.send(post(server.url))
    second = lean.send(post(server.url))

    assert (first.status_code, first.content, second.content) == (400, b"hello world", b"hello world")
    assert server.connections == 1


def test_a_connection_the_server_closes_is_not_used_again(serve: Callable[..., Server]) -> None:
    def answer_then_close(sock: socket.socket, head: bytes, body: bytes) -> bool:
        ok()(sock, head, body)
        return False  # closed without saying so in a header, as an idle timeout does

    server = serve(answer_then_close)
    lean = session()

    lean.send(post(server.url))
    time.sleep(0.2)  # the close reaches the idle connection
    assert lean.send(post(server.url)).status_code == 200
    assert server.connections == 2


def test_connection_close_in_the_answer_is_honoured(serve: Callable[..., Server]) -> None:
    server = serve(ok(extra="Connection: close\r\n"))
    lean = session()

    for _ in range(2):
        assert lean.send(post(server.url)).status_code == 200

    assert server.connections == 2


def test_no_answer_is_a_closed_connection_as_botocore_raises_it(serve: Callable[..., Server]) -> None:
    server = serve(lambda sock, head, body: False)

    with pytest.raises(ConnectionClosedError):
        session().send(post(server.url))


def test_an_answer_cut_short_is_a_closed_connection(serve: Callable[..., Server]) -> None:
    def cut(sock: socket.socket, head: bytes, body: bytes) -> bool:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}")
        return False

    server = serve(cut)

    with pytest.raises(ConnectionClosedError):
        session().send(post(server.url))


def test_an_answer_too_late_is_a_read_timeout(serve: Callable[..., Server]) -> None:
    def late(sock: socket.socket, head: bytes, body: bytes) -> bool:
        time.sleep(1.0)
        return False

    server = serve(late)

    with pytest.raises(ReadTimeoutError):
        session(timeout=(2, 0.2)).send(post(server.url))


def test_nobody_listening_is_an_endpoint_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused

        with pytest.raises(EndpointConnectionError):
            session().send(post(f"http://127.0.0.1:{port}/"))


def test_requests_through_a_proxy_go_to_botocores_own_session(serve: Callable[..., Server]) -> None:
    server = serve(ok())
    lean = session(proxies={"http": "http://proxy.invalid:3128"})
    sent: list[Any] = []

    def fallback_send(request: Any) -> str:
        sent.append(request)
        return "fallback's answer"

    lean.fallback.send = fallback_send

    assert lean.send(post(server.url)) == "fallback's answer"
    assert server.connections == 0
    assert len(sent) == 1


def test_the_writing_client_uses_the_lean_transport(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    server = serve(ok(b'{"UnprocessedItems":{},"ConsumedCapacity":[{"TableName":"t","CapacityUnits":1.0}]}'))
    made = dynamo_client.make_client(for_writing=True, endpoint=server.url)

    for _ in range(2):
        answer = made.batch_write_item(
            RequestItems={"t": [{"PutRequest": {"Item": {"pk": {"S": "a"}}}}]}, ReturnConsumedCapacity="TOTAL"
        )

    assert isinstance(made._endpoint.http_session, LeanSession)
    assert answer["ConsumedCapacity"] == [{"TableName": "t", "CapacityUnits": 1.0}]
    assert answer["ResponseMetadata"]["RequestId"] == "abc"
    assert server.connections == 1
    assert b"Authorization: AWS4-HMAC-SHA256 Credential=test/" in server.heads[0]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def tls_server(serve: Callable[..., Server], certificate: tuple[Path, Path]) -> Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return serve(ok(), tls=context)


def test_https_is_verified_against_the_bundle_botocore_is_given(
    serve: Callable[..., Server], certificate: tuple[Path, Path]
) -> None:
    server = tls_server(serve, certificate)
    lean = session(verify=str(certificate[0]))

    assert [lean.send(post(server.url)).status_code for _ in range(2)] == [200, 200]
    assert server.connections == 1


def test_https_with_a_certificate_nobody_vouches_for_is_refused(
    serve: Callable[..., Server], certificate: tuple[Path, Path]
) -> None:
    server = tls_server(serve, certificate)

    with pytest.raises(SSLError):
        session(verify=True).send(post(server.url))
    assert session(verify=False).send(post(server.url)).status_code == 200
