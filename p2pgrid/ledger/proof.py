"""The proof of a share's Lightning payment, carried in its log entry's memo.

``ln <payment hash hex> <preimage hex> <fee msat>``: a replica checks that the
preimage hashes to the payment hash; the fee is what the giver paid on top of
the amount, so the log accounts for every msat that left its channels.
"""

from __future__ import annotations

import dataclasses
import hashlib


@dataclasses.dataclass(frozen=True, slots=True)
class ShareProof:
    """What a ``share`` entry's memo proves: the Lightning payment behind it."""

    payment_hash: bytes
    preimage: bytes
    fee_msat: int  # routing fee the giver paid on top of the amount


def proof_memo(payment_hash: bytes, preimage: bytes, fee_msat: int) -> str:
    return f"ln {payment_hash.hex()} {preimage.hex()} {fee_msat}"


def parse_proof(memo: str) -> ShareProof | None:
    """The proof in a share memo, if it carries a valid one."""
    parts = memo.split()
    if len(parts) != 4 or parts[0] != "ln":
        return None
    try:
        payment_hash, preimage, fee = (
            bytes.fromhex(parts[1]),
            bytes.fromhex(parts[2]),
            int(parts[3]),
        )
    except ValueError:
        return None
    if hashlib.sha256(preimage).digest() != payment_hash or fee < 0:
        return None
    return ShareProof(payment_hash, preimage, fee)
