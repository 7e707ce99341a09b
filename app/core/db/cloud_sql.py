"""Cloud SQL for PostgreSQL through the Cloud SQL Python Connector, with IAM database authentication.

No password exists anywhere. Credentials come from Application Default Credentials (the
function's service account on Google Cloud). The connector asks the SQL Admin API for the
instance's address and CA, and for a short-lived client certificate bound to that identity,
then opens TLS 1.3 to the instance's server-side proxy on port 3307; the database logs the
IAM user in on the strength of that certificate.
"""

import ssl
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg
import google.auth.exceptions
from google.cloud.sql.connector import Connector, create_async_connector

from app.core.settings import Settings


async def open_connector(settings: Settings) -> Connector:
    """Must run inside the loop that will use it: the connector is bound to its creating loop."""
    return await create_async_connector(
        ip_type=settings.db_ip_type,
        enable_iam_auth=True,
        # Lazy: refresh the certificate when a connection needs it. Cloud Functions throttle
        # the CPU between requests, so a background refresher would stall and serve stale certs.
        refresh_strategy="lazy",
        sqladmin_api_endpoint=settings.cloud_sql_admin_endpoint,
    )


def connection_factory(
    connector: Connector, settings: Settings, server_settings: dict[str, str]
) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """How the pool (and `migration_engine`, as SQLAlchemy's `async_creator`) opens a connection:
    every one through the connector."""
    instance = settings.instance_connection_name
    assert instance is not None  # only called for Cloud SQL settings

    async def connect() -> asyncpg.Connection:
        connection: asyncpg.Connection = await connector.connect_async(
            instance,
            "asyncpg",
            user=settings.db_iam_user,  # a service account email; the connector drops .gserviceaccount.com
            db=settings.db_name,
            server_settings=server_settings,
        )
        return connection

    return connect


def describe_failure(error: BaseException) -> str | None:
    """A clear, non-secret reason for a connector failure, or None if it is not one."""
    if isinstance(error, google.auth.exceptions.GoogleAuthError):
        return "could not obtain Google credentials (Application Default Credentials)"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"the Cloud SQL Admin API answered {error.status} for this instance"
    if isinstance(error, aiohttp.ClientError):
        return "the Cloud SQL Admin API could not be reached"
    if isinstance(error, ssl.SSLError):
        return "the TLS handshake with the instance failed (client certificate refused?)"
    return None
