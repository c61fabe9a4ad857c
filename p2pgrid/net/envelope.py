"""The signed envelope every p2pgrid message travels in (byte layout: docs/protocol-net.md).

An envelope carries one or more application records (a small message batch)
from one device of one site. It names the site, the device index, the libp2p
peer id the device speaks from, a replay nonce (epoch, seq) and a timestamp,
and ends with the device key's BIP340 signature over a context string (the
topic or protocol id) and every byte before the signature.

All integers are big-endian. Encoded once at the edge: :func:`seal` makes the
bytes, :func:`parse` checks them and returns a frozen :class:`Envelope`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from p2pgrid.identity import SIGNATURE_LEN, Signer, verify
from p2pgrid.net.errors import EnvelopeError

VERSION = 1
#: Largest envelope accepted on a pubsub topic (bytes, signature included).
MAX_ENVELOPE_BYTES = 64 * 1024
#: Largest envelope accepted on a direct stream (request/response, bulk).
MAX_STREAM_ENVELOPE_BYTES = 4 * 1024 * 1024
#: Domain separation prefix of the signed message.
SIGNING_DOMAIN = b"p2pgrid-envelope-v1\x00"
SITE_ID_LEN = 8
MAX_PEER_ID_LEN = 64
MAX_RECORDS = 1024

#: Record kinds below this value are reserved for the net layer itself.
FIRST_APP_KIND = 0x0100
KIND_HELLO = 0x0001
KIND_ERROR = 0x0002
MAX_KIND = 0xFFFF

# version u8 | site_id 8s | device_index u32 | peer_id_len u8
_HEAD = struct.Struct(">B8sIB")
# epoch u32 | seq u64 | timestamp_ms u64 | record_count u16
_NONCE = struct.Struct(">IQQH")
# kind u16 | length u32
_RECORD = struct.Struct(">HI")


@dataclass(frozen=True, slots=True)
class Record:
    """One application message inside an envelope: a kind and its encoded bytes."""

    kind: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope. ``body`` is every byte before the signature."""

    site_id: str
    device_index: int
    peer_id: bytes
    epoch: int
    seq: int
    timestamp_ms: int
    records: tuple[Record, ...]
    signature: bytes
    body: bytes

    @property
    def nonce(self) -> tuple[str, int, int, int]:
        """What a replay repeats: (site, device, epoch, seq)."""
        return (self.site_id, self.device_index, self.epoch, self.seq)

    def verify(self, pubkey: bytes, context: str) -> bool:
        """Whether ``signature`` is the key ``pubkey``'s over ``context`` and the body."""
        return verify(pubkey, signed_message(context, self.body), self.signature)


def signed_message(context: str, body: bytes) -> bytes:
    """The bytes whose SHA-256 the device key signs (BIP340)."""
    ctx = context.encode()
    return SIGNING_DOMAIN + struct.pack(">H", len(ctx)) + ctx + body


def encode_body(
    *,
    site_id: str,
    device_index: int,
    peer_id: bytes,
    epoch: int,
    seq: int,
    timestamp_ms: int,
    records: Sequence[Record],
) -> bytes:
    """The unsigned part of an envelope."""
    site = bytes.fromhex(site_id)
    if len(site) != SITE_ID_LEN:
        raise EnvelopeError(f"site id must be {SITE_ID_LEN} bytes, got {len(site)}")
    if not 0 < len(peer_id) <= MAX_PEER_ID_LEN:
        raise EnvelopeError(f"peer id must be 1..{MAX_PEER_ID_LEN} bytes")
    if not 0 < len(records) <= MAX_RECORDS:
        raise EnvelopeError(f"an envelope holds 1..{MAX_RECORDS} records")
    parts = [
        _HEAD.pack(VERSION, site, device_index, len(peer_id)),
        peer_id,
        _NONCE.pack(epoch, seq, timestamp_ms, len(records)),
    ]
    for record in records:
        if not 0 <= record.kind <= MAX_KIND:
            raise EnvelopeError(f"record kind {record.kind} out of range")
        parts.append(_RECORD.pack(record.kind, len(record.data)))
        parts.append(record.data)
    return b"".join(parts)


def seal(
    signer: Signer,
    context: str,
    *,
    site_id: str,
    device_index: int,
    peer_id: bytes,
    epoch: int,
    seq: int,
    timestamp_ms: int,
    records: Sequence[Record],
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> bytes:
    """Encode and sign an envelope; raises :class:`EnvelopeError` if over ``max_bytes``."""
    body = encode_body(
        site_id=site_id,
        device_index=device_index,
        peer_id=peer_id,
        epoch=epoch,
        seq=seq,
        timestamp_ms=timestamp_ms,
        records=records,
    )
    if len(body) + SIGNATURE_LEN > max_bytes:
        raise EnvelopeError(f"envelope of {len(body) + SIGNATURE_LEN} bytes exceeds {max_bytes}")
    return body + signer.sign(signed_message(context, body))


def record_size(data: bytes) -> int:
    """Bytes one record adds to an envelope."""
    return _RECORD.size + len(data)


#: Bytes of an envelope with no records, for a peer id of ``n`` bytes: head + nonce + signature.
def overhead(peer_id_len: int) -> int:
    return _HEAD.size + peer_id_len + _NONCE.size + SIGNATURE_LEN


def parse(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Check the layout of ``data`` (not the signature) and return the envelope."""
    if len(data) > max_bytes:
        raise EnvelopeError(f"envelope of {len(data)} bytes exceeds {max_bytes}")
    try:
        version, site, device_index, peer_len = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise EnvelopeError(f"unknown envelope version {version}")
        if not 0 < peer_len <= MAX_PEER_ID_LEN:
            raise EnvelopeError(f"peer id length {peer_len} out of 1..{MAX_PEER_ID_LEN}")
        offset = _HEAD.size
        peer_id = data[offset : offset + peer_len]
        if len(peer_id) != peer_len:
            raise EnvelopeError("truncated peer id")
        offset += peer_len
        epoch, seq, timestamp_ms, count = _NONCE.unpack_from(data, offset)
        offset += _NONCE.size
        if count == 0 or count > MAX_RECORDS:
            raise EnvelopeError(f"record count {count} out of 1..{MAX_RECORDS}")
        records = []
        for _ in range(count):
            kind, length = _RECORD.unpack_from(data, offset)
            offset += _RECORD.size
            if offset + length > len(data) - SIGNATURE_LEN:
                raise EnvelopeError("record runs past the signature")
            records.append(Record(kind, data[offset : offset + length]))
            offset += length
    except struct.error as exc:
        raise EnvelopeError(f"truncated envelope: {exc}") from exc
    if len(data) - offset != SIGNATURE_LEN:
        raise EnvelopeError(f"{len(data) - offset} bytes after the records, expected a signature")
    return Envelope(
        site_id=site.hex(),
        device_index=device_index,
        peer_id=peer_id,
        epoch=epoch,
        seq=seq,
        timestamp_ms=timestamp_ms,
        records=tuple(records),
        signature=data[offset:],
        body=data[:offset],
    )
