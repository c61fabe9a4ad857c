"""An :class:`LndClient` whose REST calls go to a handler in the test (httpx's
``MockTransport``), for the client's own behaviour without an lnd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from p2pgrid.lightning.lnd import LndClient, LndEndpoint


def mock_client(handle: Callable[[httpx.Request], httpx.Response]) -> LndClient:
    endpoint = LndEndpoint("fake", "127.0.0.1", 1, Path("/nonexistent"), Path("/nonexistent"))
    client = LndClient(endpoint)
    client._client = httpx.AsyncClient(
        base_url=endpoint.base_url, transport=httpx.MockTransport(handle)
    )
    return client
