"""A token issuer for the tests: RSA keys, a JWKS served on loopback, and tokens signed with them."""

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

GOOGLE_ISSUER = "https://accounts.google.com"
AUDIENCE = "https://projects-api.example.test"


@dataclass
class SigningKey:
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        entry: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return entry | {"kid": self.kid, "alg": "RS256", "use": "sig"}


@dataclass
class Issuer:
    """Serves its public keys at `jwks_url`; `published` decides which keys the JWKS lists."""

    issuer: str = GOOGLE_ISSUER
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey()])
    published: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    down: bool = False

    def __post_init__(self) -> None:
        self.published = list(self.keys)

    def start(self) -> "Issuer":
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                issuer.fetches += 1
                if issuer.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": [key.jwk() for key in issuer.published]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_url = f"http://127.0.0.1:{self._server.server_address[1]}/certs"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def token(
        self,
        email: str = "alice@example.com",
        *,
        key: SigningKey | None = None,
        audience: str = AUDIENCE,
        issuer: str | None = None,
        expires_in: int = 300,
        email_verified: bool = True,
        **claims: Any,
    ) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        payload = {
            "iss": issuer or self.issuer,
            "aud": audience,
            "sub": f"sub-{email}",
            "email": email,
            "email_verified": email_verified,
            "iat": now - 10,
            "exp": now + expires_in,
        } | claims
        return jwt.encode(payload, key.private, algorithm="RS256", headers={"kid": key.kid})
