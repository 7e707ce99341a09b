"""ID-token verification with PyJWT: signature against a cached JWKS, expiry, issuer, audience.

Imported only when AUTH_MODE is not `none`: PyJWT with cryptography is a slow import (docs/benchmarks.md).
"""

import asyncio
import json
import logging
import math
import time
import urllib.request
from collections import OrderedDict
from typing import Any

import jwt

from app.core.errors import ServiceUnavailable, Unauthenticated
from app.core.once import Once

logger = logging.getLogger(__name__)

GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"})  # never "none" or HMAC
MIN_REFETCH_S = 30.0  # an unknown `kid` refetches the key set at most this often
FETCH_TIMEOUT_S = 5.0
CLOCK_SKEW_S = 30
VERIFIED_TOKENS_KEPT = 10_000  # a few MB at most: tokens are about 1 KB


class KeySet:
    """A JWKS cache. Keys are fetched off the event loop, at most once every MIN_REFETCH_S."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._fetch_once = Once(self._fetch)  # concurrent misses share one fetch

    async def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        key = self._lookup(kid)
        if key is None and time.monotonic() - self._fetched_at >= MIN_REFETCH_S:
            await self._refresh()
            key = self._lookup(kid)
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:  # a lone key needs no id
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if kid is not None else None

    async def _refresh(self) -> None:
        try:
            await self._fetch_once()
        finally:
            self._fetch_once.reset()  # the next miss (after MIN_REFETCH_S) fetches again

    async def _fetch(self) -> None:
        try:
            document = await asyncio.to_thread(_download_json, self.url)  # never block the loop
            keys = {}
            for entry in document.get("keys", []):
                if entry.get("use", "sig") == "sig" and "kid" in entry:
                    keys[entry["kid"]] = jwt.PyJWK(entry)
        except Exception as error:
            logger.warning("cannot fetch the signing keys from %s: %s", self.url, type(error).__name__)
            raise ServiceUnavailable("the token signing keys cannot be fetched right now") from None
        finally:
            self._fetched_at = time.monotonic()  # a failed fetch also counts, or an outage would hammer it
        self._keys = keys
        logger.info("fetched %d signing keys from %s", len(keys), self.url)


def _download_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 (https, or http on loopback: Settings checks)
        document: dict[str, Any] = json.loads(response.read())
        return document


_REFUSALS = [  # why a token is refused, in words for the client (never the token itself)
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (audience)"),
    (jwt.InvalidIssuerError, "the token's issuer is not accepted"),
    (jwt.InvalidSignatureError, "the token's signature is not valid"),
]


class TokenVerifier:
    """Verifies ID tokens, and remembers the ones it has verified until they expire.

    A caller sends the same token with every request for up to an hour, and checking its RS256
    signature each time would cost more CPU than the rest of a read (docs/benchmarks.md). A
    verified token stays valid until its `exp` whatever happens to the key set (an ID token cannot
    be revoked), so it is verified once.
    """

    def __init__(self, *, keys: KeySet, issuers: tuple[str, ...], audience: str) -> None:
        self.keys = keys
        self.issuers = issuers
        self.audience = audience
        self._verified: OrderedDict[str, tuple[str, float]] = OrderedDict()  # token -> (principal, exp)

    async def principal(self, token: str) -> str:
        """The verified caller: its `email` when verified, else its `sub`."""
        if (known := self._verified.get(token)) is not None and time.time() < known[1]:
            return known[0]
        principal, expires = await self._verify(token)
        self._verified[token] = (principal, expires)
        if len(self._verified) > VERIFIED_TOKENS_KEPT:
            self._verified.popitem(last=False)  # the oldest first
        return principal

    async def _verify(self, token: str) -> tuple[str, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("the token is not a well-formed JWT", token_refused=True) from None
        key = await self.keys.key_for(header.get("kid"))  # PyJWT refuses a kid that is not a string
        if key is None:
            raise Unauthenticated("the token was signed with an unknown key", token_refused=True)
        algorithm = header.get("alg")  # any JSON value: PyJWT does not check it
        if (
            not isinstance(algorithm, str)
            or algorithm not in ALGORITHMS
            or algorithm != (key.algorithm_name or algorithm)
        ):
            raise Unauthenticated("the token's signing algorithm is not accepted", token_refused=True)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuers,
                leeway=CLOCK_SKEW_S,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as error:
            fallback = f"the token is not valid ({type(error).__name__})"
            reason = next((why for kind, why in _REFUSALS if isinstance(error, kind)), fallback)
            raise Unauthenticated(reason, token_refused=True) from None
        email = claims.get("email")
        principal = email if isinstance(email, str) and claims.get("email_verified") is True else str(claims["sub"])
        return principal, float(claims["exp"])
