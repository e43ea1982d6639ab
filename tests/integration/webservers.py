"""Real local HTTP and HTTPS servers (stdlib) that behave well and badly, for URL Fetch tests."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import json
import pathlib
import socket
import ssl
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "close" in self._query():  # ?close=1: no keep-alive, so the next request needs a new connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        self.server.seen.append(self.path)
        path = urllib.parse.urlsplit(self.path).path
        q = self._query()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == "/echo":
            self._send(200, json.dumps({"method": self.command, "path": self.path, "body": body.decode("latin-1"),
                                        "headers": dict(self.headers.items())}).encode(),
                       {"Content-Type": "application/json", "X-Multi": "a", "Set-Cookie": "k=v"})
        elif path == "/redirect":
            # A non-ASCII location goes out as raw UTF-8 bytes, as servers send it.
            self._send(int(q.get("status", "302")), b"moved", {"Location": q["to"].encode().decode("latin-1")})
        elif path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif path == "/big":
            size = int(q["n"])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"x" * 65536
            with contextlib.suppress(OSError):
                for _ in range(size // len(chunk)):
                    self.wfile.write(chunk)
                self.wfile.write(b"x" * (size % len(chunk)))
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with contextlib.suppress(OSError):
                while True:
                    self.wfile.write(b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    self.wfile.write(b"z")
                    self.wfile.flush()
                    time.sleep(0.05)
        elif path == "/slow":
            time.sleep(float(q.get("s", "0.5")))
            self._send(200, b"slow")
        elif path == "/garbage":
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            self.close_connection = True
        elif path == "/hangup":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif path == "/status":
            self._send(int(q["code"]), b"status " + q["code"].encode())
        else:
            self._send(200, b"hello from " + self.server.server_address[0].encode(), {"Content-Type": "text/plain"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _route


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[Handler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.seen: list[str] = []  # the path of every request received, in order
        self.server_names: list[str | None] = []  # the TLS server name (SNI) of every handshake
        self.cert_dir: pathlib.Path | None = None  # where its certificate (cert.pem) is, when it serves TLS
        self.errors: list[str] = []  # tracebacks of requests that failed on the server's side

    def handle_error(self, request: object, client_address: object) -> None:
        """Kept, not printed: the server's threads outlive the test that started a slow answer (a client that gave
        up on it breaks the pipe), and a traceback printed later lands in the stderr another test is reading."""
        self.errors.append(traceback.format_exc())

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if isinstance(self.socket, ssl.SSLSocket) else 'http'}://{host}:{port}"


def self_signed(directory: pathlib.Path, host: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A throwaway certificate for ``host`` (an IP or a DNS name), signed by itself: no client trusts it unless
    told to (``SSL_CERT_FILE``)."""
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt_name = x509.DNSName(host)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextlib.contextmanager
def serving(host: str, *, tls_dir: pathlib.Path | None = None, cert_name: str | None = None) -> Iterator[Server]:
    """An HTTP (or, given ``tls_dir``, HTTPS) server on ``host`` and a free port, in a background thread; its
    certificate names ``cert_name`` (default: ``host``)."""
    server = Server((host, 0), Handler)
    if tls_dir is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self_signed(tls_dir, cert_name or host))
        server.cert_dir = tls_dir
        ctx.sni_callback = lambda sock, name, _ctx: server.server_names.append(name)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
