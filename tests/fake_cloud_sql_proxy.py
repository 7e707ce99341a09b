"""A stand-in for the `cloud-sql-proxy` command, as scripts/grant_roles.sh calls it.

It takes the real proxy's arguments (the instance connection name, --address, --port, and
--gcloud-auth), starts listening only after a delay (the real one needs a moment, so the script
must wait for it), then relays each connection to the test PostgreSQL named by
FAKE_PROXY_UPSTREAM ("unix:/path/.s.PGSQL.5432" or "tcp:host:port"). It writes its arguments to
FAKE_PROXY_LOG and runs until it is terminated.
"""

import argparse
import asyncio
import os
import re
import sys

START_DELAY_S = 0.3


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    kind, _, target = os.environ["FAKE_PROXY_UPSTREAM"].partition(":")
    if kind == "unix":
        reader, writer = await asyncio.open_unix_connection(target)
    else:
        host, _, port = target.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
    await asyncio.gather(_pipe(client_reader, writer), _pipe(reader, client_writer))


async def _serve(address: str, port: int) -> None:
    await asyncio.sleep(START_DELAY_S)
    server = await asyncio.start_server(_relay, address, port)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(prog="cloud-sql-proxy")
    parser.add_argument("instance")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gcloud-auth", action="store_true")
    arguments = parser.parse_args()
    with open(os.environ["FAKE_PROXY_LOG"], "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\n")
    if not re.fullmatch(r"[a-z][a-z0-9-]*:[a-z0-9-]+:[a-z][a-z0-9-]*", arguments.instance):
        print(f"invalid instance connection name {arguments.instance!r}", file=sys.stderr)
        return 1
    asyncio.run(_serve(arguments.address, arguments.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
