"""An offline Cloud SQL for PostgreSQL, for tests that run the REAL Cloud SQL Python Connector.

- A token endpoint: the `token_uri` of service-account key files written by `key_file()`, so the
  app gets credentials through Application Default Credentials exactly as in production.
- The SQL Admin API: `connectSettings` (region, version, a PRIMARY address on loopback, the CA)
  and `generateEphemeralCert` (signs the posted public key; the IAM principal goes in the CN).
- The instance's server-side proxy: TLS 1.3 on port 3307 of a loopback address, requiring a
  client certificate this fake issued and still valid, logging the IAM user in (the startup
  message's user must be the certificate's principal), then relaying bytes to the test PostgreSQL.

Knobs (`admin_status`, `token_error`, `refuse_login`, `cert_lifetime`) inject failures;
`certificates`, `connections` and `admin_calls` record what happened.
"""

import asyncio
import datetime
import json
import random
import ssl
import struct
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import jwt

PROXY_PORT = 3307  # fixed by the connector
LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"
_SSL_REQUEST, _CANCEL_REQUEST = 80877103, 80877102


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name("Fake Cloud SQL CA"))
            .issuer_name(_name("Fake Cloud SQL CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def sign(self, public_key: Any, common_name: str, lifetime: datetime.timedelta) -> x509.Certificate:
        """A certificate for `common_name`; an email (a principal) also goes in the subject's
        alternative name, whole: a common name may have at most 64 characters, an email more."""
        now = datetime.datetime.now(datetime.UTC)
        builder = x509.CertificateBuilder()
        if "@" in common_name:
            alternative = x509.SubjectAlternativeName([x509.RFC822Name(common_name)])
            builder = builder.add_extension(alternative, critical=False)
        return (
            builder.subject_name(_name(common_name[:64]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=5))
            .not_valid_after(now + lifetime)
            .sign(self.key, hashes.SHA256())
        )


@dataclass
class ProxyConnection:
    certificate_serial: int
    principal: str
    user: str = ""
    database: str = ""
    password_sent: bool = False
    refused: bool = False


@dataclass
class FakeCloudSQL:
    upstream: tuple[str, ...]  # ("unix", path) or ("tcp", host, port) of the test PostgreSQL
    project: str = "fake-project"
    region: str = "fake-region1"
    instance: str = "fake-instance"
    admin_status: int = 200  # anything else: the Admin API answers with it
    token_error: bool = False  # the token endpoint refuses every grant
    refuse_login: bool = False  # the instance refuses every login
    cert_lifetime: datetime.timedelta = datetime.timedelta(hours=1)
    certificates: list[x509.Certificate] = field(default_factory=list)
    connections: list[ProxyConnection] = field(default_factory=list)
    admin_calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority()
        self.address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self._keys: dict[str, rsa.RSAPrivateKey] = {}  # service account email -> key
        self._tokens: dict[str, tuple[str, str]] = {}  # access token -> (email, scope)
        self._folder = tempfile.TemporaryDirectory(prefix="fake-cloudsql-")

    @property
    def connection_name(self) -> str:
        return f"{self.project}:{self.region}:{self.instance}"

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeCloudSQL":
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start_proxy(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        asyncio.run_coroutine_threadsafe(self._stop_proxy(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._folder.cleanup()

    def key_file(self, email: str) -> Path:
        """A service-account key file whose token_uri is this fake: use as GOOGLE_APPLICATION_CREDENTIALS."""
        key = self._keys.setdefault(email, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = Path(self._folder.name) / f"{email}.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": self.project,
                    "private_key_id": uuid.uuid4().hex,
                    "private_key": pem.decode(),
                    "client_email": email,
                    "client_id": "1",
                    "token_uri": f"{self.url}/token",
                }
            )
        )
        return path

    # ---- token endpoint and SQL Admin API -----------------------------------------------------
    def grant_token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if self.token_error:
            return 400, {"error": "invalid_grant", "error_description": "account disabled (injected)"}
        assertion = form["assertion"][0]
        email = jwt.decode(assertion, verify=False)["iss"]
        public = (
            self._keys[email]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        # google-auth signs the grant for Google's token endpoint, whatever the key file's token_uri.
        claims = jwt.decode(assertion, certs=public.decode(), audience="https://oauth2.googleapis.com/token")
        token = f"ya29.fake-{uuid.uuid4().hex}"
        self._tokens[token] = (email, claims.get("scope", ""))
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def admin(self, method: str, path: str, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.admin_calls.append(f"{method} {path.rsplit('/', 1)[-1]}")
        prefix = f"/sql/v1beta4/projects/{self.project}/instances/{self.instance}"
        if self.admin_status != 200:
            return self.admin_status, {"error": {"code": self.admin_status, "message": "injected failure"}}
        if token not in self._tokens:
            return 401, {"error": {"code": 401, "message": "invalid credentials"}}
        if method == "GET" and path == f"{prefix}/connectSettings":
            return 200, {
                "kind": "sql#connectSettings",
                "region": self.region,
                "databaseVersion": "POSTGRES_15",
                "backendType": "SECOND_GEN",
                "ipAddresses": [{"type": "PRIMARY", "ipAddress": self.address}],
                "serverCaCert": {"cert": _pem(self.ca.certificate)},
            }
        if method == "POST" and path == f"{prefix}:generateEphemeralCert":
            principal, scope = self._tokens.get(body.get("access_token", ""), ("", ""))
            if LOGIN_SCOPE not in scope.split():
                return 400, {"error": {"code": 400, "message": "access_token lacks the login scope"}}
            public_key = serialization.load_pem_public_key(body["public_key"].encode())
            certificate = self.ca.sign(public_key, principal, self.cert_lifetime)
            self.certificates.append(certificate)
            return 200, {"ephemeralCert": {"kind": "sql#sslCert", "cert": _pem(certificate)}}
        return 404, {"error": {"code": 404, "message": f"no such method {path}"}}

    # ---- the instance's server-side proxy ------------------------------------------------------
    async def _start_proxy(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        server_cert = self.ca.sign(server_key.public_key(), self.connection_name, datetime.timedelta(days=1))
        folder = Path(self._folder.name)
        (folder / "server.pem").write_text(_pem(server_cert))
        (folder / "server.key").write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context.load_cert_chain(folder / "server.pem", folder / "server.key")
        context.verify_mode = ssl.CERT_REQUIRED  # only clients holding a certificate we issued
        context.load_verify_locations(cadata=_pem(self.ca.certificate))
        self._proxy = await asyncio.start_server(self._serve_client, self.address, PROXY_PORT, ssl=context)

    async def _stop_proxy(self) -> None:
        self._proxy.close()
        await self._proxy.wait_closed()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        peer = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))
        principal = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.RFC822Name
        )[0]
        record = ProxyConnection(peer.serial_number, str(principal))
        self.connections.append(record)
        try:
            startup = await _read_startup(reader)
            record.user, record.database = startup.get("user", ""), startup.get("database", "")
            expected_user = record.principal.removesuffix(".gserviceaccount.com")
            if self.refuse_login or record.user != expected_user:
                record.refused = True
                writer.write(_fatal("28000", f'IAM authentication failed for user "{record.user}"'))
                await writer.drain()
                return
            upstream_reader, upstream_writer = await self._open_upstream()
            upstream_writer.write(startup["_raw"])
            await asyncio.gather(self._relay_client(reader, upstream_writer, record), _pipe(upstream_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream[0] == "unix":
            return await asyncio.open_unix_connection(self.upstream[1])
        return await asyncio.open_connection(self.upstream[1], int(self.upstream[2]))

    async def _relay_client(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, record: ProxyConnection
    ) -> None:
        """Client to server, message by message, noting any PasswordMessage ('p')."""
        try:
            while True:
                header = await reader.readexactly(5)
                kind, length = header[:1], struct.unpack("!I", header[1:])[0]
                payload = await reader.readexactly(length - 4)
                record.password_sent = record.password_sent or kind == b"p"
                upstream.write(header + payload)
                await upstream.drain()
        finally:
            upstream.close()


async def _read_startup(reader: asyncio.StreamReader) -> dict[str, Any]:
    length = struct.unpack("!I", await reader.readexactly(4))[0]
    body = await reader.readexactly(length - 4)
    code = struct.unpack("!I", body[:4])[0]
    if code in (_SSL_REQUEST, _CANCEL_REQUEST):
        raise ConnectionError("only direct TLS startup messages are expected")
    parts = body[4:].split(b"\0")
    params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]}
    return params | {"_raw": struct.pack("!I", length) + body}


def _fatal(code: str, message: str) -> bytes:
    fields = b"SFATAL\0VFATAL\0C" + code.encode() + b"\0M" + message.encode() + b"\0\0"
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def _handler_for(fake: FakeCloudSQL) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def _token(self) -> str:
            return self.headers.get("Authorization", "").removeprefix("Bearer ")

        def do_GET(self) -> None:
            self._answer(*fake.admin("GET", self.path, self._token(), {}))

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/token":
                self._answer(*fake.grant_token(parse_qs(body.decode())))
            else:
                self._answer(*fake.admin("POST", self.path, self._token(), json.loads(body or b"{}")))

    return Handler
