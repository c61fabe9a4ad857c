"""Fixtures of the net tests: sites, hosts and a test message (the session's one
trio bridge comes from tests/conftest.py)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import ClassVar, Self

import pytest

from p2pgrid.net import DeviceKey, NetConfig, PeerHost, Topic, TrioBridge, site_topic
from tests.sites import TestSite


@dataclass(frozen=True)
class Note:
    """A tiny application message for the tests."""

    KIND: ClassVar[int] = 0x0101
    n: int
    text: str = ""

    def encode(self) -> bytes:
        return struct.pack(">Q", self.n) + self.text.encode()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (n,) = struct.unpack_from(">Q", data)
        return cls(n, data[8:].decode())


@pytest.fixture(scope="session")
def owner() -> TestSite:
    return TestSite(b"p2pgrid-net-tests-site-a")


@pytest.fixture(scope="session")
def other_owner() -> TestSite:
    return TestSite(b"p2pgrid-net-tests-site-b")


@pytest.fixture
def topic(owner: TestSite) -> Topic:
    """The site topic of ``owner``, whose devices 0..63 are enrolled."""
    return site_topic(owner.roster())


MakeHost = Callable[..., Awaitable[PeerHost]]


@pytest.fixture
async def make_host(bridge: TrioBridge, owner: TestSite, topic: Topic) -> AsyncIterator[MakeHost]:
    """Start hosts on the shared bridge; every one is stopped after the test."""
    async with AsyncExitStack() as stack:

        async def make(
            index: int,
            *,
            signer_owner: TestSite | None = None,
            site_owner: TestSite | None = None,
            topics: list[Topic] | None = None,
            **config: object,
        ) -> PeerHost:
            site = (site_owner or owner).identity
            signer = (signer_owner or site_owner or owner).device(index)
            host = PeerHost(
                NetConfig(**config),  # type: ignore[arg-type]
                DeviceKey(site, index, signer),
                topics or [topic],
                bridge=bridge,
                name=f"test-{index}",
            )
            await host.start()
            stack.push_async_callback(host.stop)
            return host

        yield make
