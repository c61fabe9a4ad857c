"""A plain libp2p host (no p2pgrid hello, no membership) can ping a p2pgrid host.

Other implementations (js-libp2p, go-libp2p) keep connections alive with the
libp2p ping protocol ``/ipfs/ping/1.0.0``; a host that does not answer it is
dropped by their connection monitors.
"""

from __future__ import annotations

from typing import Literal

import multiaddr
import pytest
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import PingService
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from p2pgrid.net import TrioBridge
from p2pgrid.net.muxer import muxer_options
from tests.net.conftest import MakeHost


@pytest.mark.parametrize("muxer", ["mplex", "yamux"])
async def test_a_plain_libp2p_host_pings_a_p2pgrid_host(
    make_host: MakeHost, bridge: TrioBridge, muxer: Literal["mplex", "yamux"]
) -> None:
    target = await make_host(3)
    address = target.addrs[0]

    async def ping() -> list[int]:
        key_pair = create_new_key_pair()
        noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
        stranger = new_host(
            key_pair=key_pair,
            muxer_opt=muxer_options(muxer),
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        )
        async with stranger.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            peer = info_from_p2p_addr(multiaddr.Multiaddr(address))
            await stranger.connect(peer)
            return await PingService(stranger).ping(peer.peer_id, 3)

    rtts = await bridge.run(ping)
    assert len(rtts) == 3  # three round trips answered, none failed
