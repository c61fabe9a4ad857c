"""The dashboard's web server (aiohttp): one page, its script, a JSON snapshot
and a stream of snapshots as server-sent events.

Routes: ``/`` (the page), ``/app.js``, ``/api/snapshot`` (JSON), ``/events``
(``text/event-stream``: one ``snapshot`` event on connect, then one each time
an entry is appended to any of the node's replicas, or a peer reports a new
digest). Read-only: no route
changes anything.

It binds to loopback unless configured otherwise; bound elsewhere it needs a
token, which every request must carry (``?token=`` or ``Authorization: Bearer``).
:meth:`Dashboard.start` returns once the socket listens; :meth:`Dashboard.stop`
ends the event streams, then the server, and is safe to call twice. Stop it
before the stores it reads close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import importlib.resources
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from p2pgrid.dashboard.snapshot import SiteFeed, node_snapshot
from p2pgrid.errors import ConfigError
from p2pgrid.ledger import Replicator

log = logging.getLogger(__name__)

#: How long stop() lets open event streams and requests finish.
SHUTDOWN_TIMEOUT_S = 2.0
#: An SSE comment this often keeps idle connections (and proxies) open.
KEEPALIVE_S = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class DashboardConfig:
    """Where the dashboard listens. ``port=0``: any free port. A host other than
    loopback needs a ``token``."""

    host: str = "127.0.0.1"
    port: int = 0
    token: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"dashboard port {self.port} out of range")
        if not _is_loopback(self.host) and len(self.token) < 16:
            raise ConfigError(
                f"the dashboard binds to {self.host}, beyond loopback: "
                "it needs a token of at least 16 characters"
            )


def _static(name: str) -> bytes:
    return (importlib.resources.files("p2pgrid.dashboard") / "static" / name).read_bytes()


class Dashboard:
    """Serves ``feeds`` (a node's site replicas) on ``config``'s address."""

    def __init__(self, node: str, feeds: tuple[SiteFeed, ...], config: DashboardConfig) -> None:
        self.node = node
        self.feeds = feeds
        self.config = config
        self._runner: web.AppRunner | None = None
        self._url = ""
        self._version = 0
        self._changed = asyncio.Condition()
        self._stopping = False
        self._group: asyncio.TaskGroup | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._built: tuple[int, bytes] = (-1, b"")  # (version, event) shared by all streams
        self._building = asyncio.Lock()

    @property
    def url(self) -> str:
        """The page's address (with the token, if any). Empty until started."""
        return self._url

    async def __aenter__(self) -> Dashboard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/app.js", self._script)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/events", self._events)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"dashboard cannot listen on {self.config.host}: {exc}") from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        query = f"/?token={self.config.token}" if self.config.token else "/"
        self._url = f"http://{shown}:{port}{query}"
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        for feed in self.feeds:
            self._watchers.append(self._group.create_task(self._watch(feed)))
            if feed.replicator is not None:
                self._watchers.append(self._group.create_task(self._listen(feed.replicator)))
        log.info("[%s] dashboard at http://%s:%d/", self.node, shown, port)  # no token in logs

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        async with self._changed:
            self._changed.notify_all()  # event streams end
        for task in self._watchers:
            task.cancel()
        if self._group is not None:
            await self._group.__aexit__(None, None, None)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _watch(self, feed: SiteFeed) -> None:
        """Bump the version each time the feed's store appends an entry."""
        digest = feed.store.digest()
        while not self._stopping:
            new = await feed.store.wait_changed(digest)
            if new == digest:  # the store closed
                return
            digest = new
            await self._bump()

    async def _listen(self, replicator: Replicator) -> None:
        """Bump the version each time a peer reports a new digest."""
        while not self._stopping:
            await replicator.wait_heard()
            await self._bump()

    async def _bump(self) -> None:
        async with self._changed:
            self._version += 1
            self._changed.notify_all()

    def _news(self, seen: int) -> bool:
        return self._version != seen or self._stopping

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.config.token
        if token:
            given = request.query.get("token", "")
            bearer = request.headers.get("Authorization", "")
            if bearer.startswith("Bearer "):
                given = bearer.removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise web.HTTPUnauthorized(text="a token is required")
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(body=_static("index.html"), content_type="text/html")

    async def _script(self, request: web.Request) -> web.Response:
        return web.Response(body=_static("app.js"), content_type="application/javascript")

    async def _snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(await node_snapshot(self.node, self.feeds))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        seen = -1
        while not self._stopping:
            async with self._changed:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        await self._changed.wait_for(functools.partial(self._news, seen))
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                seen = self._version
            if self._stopping:
                break
            await response.write(await self._event(seen))
        return response

    async def _event(self, version: int) -> bytes:
        """The snapshot event of ``version`` or later, built once for every stream."""
        async with self._building:
            if self._built[0] < version:
                now = self._version  # appends during the build wake the streams again
                data = json.dumps(await node_snapshot(self.node, self.feeds), separators=(",", ":"))
                self._built = (now, f"event: snapshot\ndata: {data}\n\n".encode())
            return self._built[1]


def dashboard_json(snapshot: dict[str, Any]) -> str:
    """A snapshot as the API returns it (for tests and the demo's files)."""
    return json.dumps(snapshot, indent=1, sort_keys=True)
