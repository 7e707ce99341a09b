"""All configuration, read once from the environment and validated before the service starts.

Each field is the environment variable of its name in capitals (`db_pool_size`: `DB_POOL_SIZE`).
A plain pydantic model: pydantic-settings would add its imports to every cold start
(docs/benchmarks.md) for a lookup this module does in one line.
"""

import os
import re
from functools import lru_cache
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_PRINCIPAL_PATTERN = re.compile(r"(\*|[^@\s*,]+)@[^@\s*,]+\.[^@\s*,]+")
_ORIGIN_PATTERN = re.compile(r"\*|https?://[^/\s,*]+")  # scheme://host[:port]: no path, no trailing slash


def _split(patterns: str) -> list[str]:
    return [pattern.strip() for pattern in patterns.split(",") if pattern.strip()]


class SettingsError(RuntimeError):
    """A setting is missing, malformed or contradicts another; the message names the variable."""


def _log_format() -> Literal["json", "text"]:
    """JSON lines where Cloud Logging reads them (Cloud Run, which serves Cloud Functions, sets
    K_SERVICE); text for people anywhere else."""
    return "json" if os.environ.get("K_SERVICE") else "text"


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    # `make rename NAME=...` changes this with every other place that carries the name.
    service_name: str = Field(default="projects-api", pattern=r"^[a-z][a-z0-9-]{2,62}$")
    database_url: str | None = None
    instance_connection_name: str | None = Field(default=None, pattern=r"^[^:\s]+:[^:\s]+:[^:\s]+$")
    db_iam_user: str | None = None
    db_name: str = Field(default="app", min_length=1, max_length=63)
    db_ip_type: Literal["public", "private", "psc"] = "public"
    cloud_sql_admin_endpoint: str | None = None
    db_pool_size: int = Field(default=5, ge=0, le=100)
    db_max_overflow: int = Field(default=2, ge=0, le=100)
    db_pool_idle_s: float = Field(default=10, ge=0, le=3600)
    db_pool_timeout_s: float = Field(default=10, gt=0, le=300)
    db_statement_timeout_ms: int = Field(default=5000, ge=0, le=2**31 - 1)  # PostgreSQL's int limit
    db_transaction_pooling: bool = False  # DATABASE_URL is a pooler in transaction mode (PgBouncer)

    auth_mode: Literal["none", "google", "oidc"] = "none"
    auth_audience: str | None = None
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    auth_allowed_principals: str = ""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = Field(default_factory=_log_format)
    root_path: str = Field(default="", pattern=r"^(/[^/\s]+)*$")
    trusted_proxy_hops: int = Field(default=1, ge=0, le=10)
    cors_allowed_origins: str = ""

    @field_validator("oidc_jwks_url")
    @classmethod
    def _key_set_url(cls, url: str | None) -> str | None:
        """The signing keys decide who gets in: fetched over https, or over http on this machine only."""
        if url is None:
            return url
        parts = urlsplit(url)
        loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"} and not parts.username
        if not (parts.scheme == "https" and parts.hostname) and not (parts.scheme == "http" and loopback):
            raise ValueError("must be an https:// URL (http:// only on 127.0.0.1, localhost or [::1])")
        return url

    @field_validator("database_url")
    @classmethod
    def _async_postgres_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a postgresql+asyncpg:// URL")
        if url is not None:
            from sqlalchemy.engine import make_url  # imported by the app anyway; not by this module's users

            try:
                port = make_url(url).port
            except ValueError:
                raise ValueError("is not a valid URL (its port must be a number)") from None
            if port is not None and not 0 < port < 65536:
                raise ValueError("has a port out of range (1-65535)")
        return url

    @field_validator("auth_allowed_principals")
    @classmethod
    def _principal_patterns(cls, value: str) -> str:
        for pattern in _split(value):
            if not _PRINCIPAL_PATTERN.fullmatch(pattern):
                raise ValueError(f"{pattern!r} is neither an email nor a *@domain pattern")
        return value

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in _split(value):
            if not _ORIGIN_PATTERN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com (or *)")
        return value

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """The origins browsers may call from; empty means CORS is off."""
        return tuple(_split(self.cors_allowed_origins))

    @property
    def allowed_principals(self) -> tuple[str, ...]:
        """Lower-cased emails and `*@domain` patterns; empty means any verified caller."""
        return tuple(pattern.lower() for pattern in _split(self.auth_allowed_principals))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.database_url and self.instance_connection_name:
            raise ValueError("DATABASE_URL and INSTANCE_CONNECTION_NAME: set one, not both")
        if not self.database_url and not self.instance_connection_name:
            raise ValueError("DATABASE_URL or INSTANCE_CONNECTION_NAME: one must be set")
        if self.instance_connection_name and not self.db_iam_user:
            raise ValueError("DB_IAM_USER: required with INSTANCE_CONNECTION_NAME")
        if self.db_transaction_pooling and self.instance_connection_name:
            raise ValueError(
                "DB_TRANSACTION_POOLING: needs DATABASE_URL, the pooler's address"
                " (the Cloud SQL Python Connector connects to the instance itself)"
            )
        if self.db_transaction_pooling and "db_statement_timeout_ms" in self.model_fields_set:
            raise ValueError(
                "DB_STATEMENT_TIMEOUT_MS: a transaction pooler refuses session settings;"
                " set statement_timeout on the database role instead (ALTER ROLE ... SET statement_timeout)"
            )
        if self.db_pool_size + self.db_max_overflow < 1:
            raise ValueError("DB_POOL_SIZE + DB_MAX_OVERFLOW: must allow at least one connection")
        if self.auth_mode != "none" and not self.auth_audience:
            raise ValueError(f"AUTH_AUDIENCE: required with AUTH_MODE={self.auth_mode}")
        if self.auth_mode == "oidc" and not (self.oidc_issuer and self.oidc_jwks_url):
            raise ValueError("OIDC_ISSUER and OIDC_JWKS_URL: required with AUTH_MODE=oidc")
        return self


def load_settings() -> Settings:
    """Read the environment; turn pydantic's report into one message that names each variable."""
    environment = {name: os.environ[name.upper()] for name in Settings.model_fields if name.upper() in os.environ}
    try:
        return Settings.model_validate(environment)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            variable = "_".join(str(part) for part in item["loc"]).upper()
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{variable}: {message}" if variable else message)
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
