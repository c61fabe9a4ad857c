"""Several devices behind one libp2p host: the hello's device proofs, a request's
target, and the addresses the asyncio side names such a device by.

A host may speak for several devices of one site (a gateway's
:class:`~p2pgrid.net.hub.HostHub`). Its hello envelope is signed by its first
device, as a host of one device signs it, and carries a second record (kind
:data:`KIND_DEVICES`) with one proof per other device: that device's signature
over :func:`binding` (the host's peer id and the site), so no host can claim a
device whose key it does not hold. A request to one of them starts with a
record of kind :data:`KIND_TARGET` naming the device; a refusal may carry a
reason (kind :data:`~p2pgrid.net.envelope.KIND_ERROR`). Byte layouts:
docs/protocol-net.md, sections 6 and 7.

Addresses (never on the wire): a device of a host that speaks for one device is
named by the host's peer id alone, as before; a device of a host that speaks
for several by ``<peer id>/<site id>/<device index>`` (:func:`address`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from p2pgrid.identity import SIGNATURE_LEN, Signer, verify
from p2pgrid.net.envelope import SITE_ID_LEN
from p2pgrid.net.errors import FrameError

#: The hello's record of the host's other devices (after the hello record).
KIND_DEVICES = 0x0003
#: A request's first record when it names the device it is for.
KIND_TARGET = 0x0004
#: Most devices one hello may list (its envelope holds at most 64 KiB).
MAX_HELLO_DEVICES = 512
#: Longest reason of an error answer, in bytes of UTF-8.
MAX_ERROR_BYTES = 256
#: Domain of the message a device signs to prove it speaks through a host.
BINDING_DOMAIN = b"p2pgrid-host-device-v1\x00"

_PROOF = struct.Struct(">8sI64s")
_TARGET = struct.Struct(">8sI")

#: A device of a site: (site id in hex, device index).
DeviceId = tuple[str, int]


def binding(peer_id: bytes, site_id: str) -> bytes:
    """What a device signs to speak through the host ``peer_id`` for ``site_id``."""
    return BINDING_DOMAIN + bytes([len(peer_id)]) + peer_id + bytes.fromhex(site_id)


@dataclass(frozen=True, slots=True)
class DeviceProof:
    """One device a host speaks for, with its signature over :func:`binding`."""

    site_id: str
    device_index: int
    signature: bytes

    @classmethod
    def make(cls, signer: Signer, site_id: str, device_index: int, peer_id: bytes) -> DeviceProof:
        return cls(site_id, device_index, signer.sign(binding(peer_id, site_id)))

    def verify(self, pubkey: bytes, peer_id: bytes) -> bool:
        return verify(pubkey, binding(peer_id, self.site_id), self.signature)


def encode_devices(proofs: tuple[DeviceProof, ...]) -> bytes:
    if len(proofs) > MAX_HELLO_DEVICES:
        raise FrameError(f"a hello lists at most {MAX_HELLO_DEVICES} devices")
    parts = [struct.pack(">H", len(proofs))]
    for proof in proofs:
        parts.append(_PROOF.pack(bytes.fromhex(proof.site_id), proof.device_index, proof.signature))
    return b"".join(parts)


def decode_devices(data: bytes) -> tuple[DeviceProof, ...]:
    """The proofs of a :data:`KIND_DEVICES` record; :class:`FrameError` if malformed."""
    if len(data) < 2:
        raise FrameError("truncated device list")
    (count,) = struct.unpack_from(">H", data, 0)
    if count == 0 or count > MAX_HELLO_DEVICES:
        raise FrameError(f"a device list holds 1..{MAX_HELLO_DEVICES} devices, not {count}")
    if len(data) != 2 + count * _PROOF.size:
        raise FrameError(f"a list of {count} devices is {2 + count * _PROOF.size} bytes")
    proofs = []
    for i in range(count):
        site, index, signature = _PROOF.unpack_from(data, 2 + i * _PROOF.size)
        assert len(signature) == SIGNATURE_LEN
        proofs.append(DeviceProof(site.hex(), index, signature))
    return tuple(proofs)


def encode_target(device: DeviceId) -> bytes:
    return _TARGET.pack(bytes.fromhex(device[0]), device[1])


def decode_target(data: bytes) -> DeviceId:
    if len(data) != _TARGET.size:
        raise FrameError(f"a target is {_TARGET.size} bytes, not {len(data)}")
    site, index = _TARGET.unpack(data)
    return site.hex(), index


def encode_error(reason: str) -> bytes:
    return reason.encode()[:MAX_ERROR_BYTES]


def decode_error(data: bytes) -> str:
    return data[:MAX_ERROR_BYTES].decode(errors="replace")


def address(peer_id: str, device: DeviceId | None) -> str:
    """How the asyncio side names a device: the peer id of a host of one device
    (``device`` None), else ``<peer id>/<site id>/<device index>``."""
    return peer_id if device is None else f"{peer_id}/{device[0]}/{device[1]}"


def host_of(addr: str) -> str:
    """The libp2p peer id of the host at address ``addr`` (either form): what a ban
    falls on, and what tells two devices of one host apart from two hosts."""
    return addr.split("/", 1)[0]


def parse_address(addr: str) -> tuple[str, DeviceId | None]:
    """The peer id and the device (None: a host of one device) of ``addr``;
    :class:`ValueError` if it is neither form."""
    parts = addr.split("/")
    if len(parts) == 1:
        return addr, None
    if len(parts) != 3 or len(parts[1]) != 2 * SITE_ID_LEN or not parts[2].isdigit():
        raise ValueError(f"{addr!r} is not a peer id nor <peer id>/<site id>/<device index>")
    bytes.fromhex(parts[1])
    return parts[0], (parts[1], int(parts[2]))
