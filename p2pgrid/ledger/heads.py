"""Per-author heads and the replica digest.

A replica's log holds, for each author, entries 1..seq (contiguous) plus any
equivocating siblings. Its head for that author is ``(seq, count, accumulator,
tip)``: ``count`` is the number of entries held, ``accumulator`` the XOR of
their ids and ``tip`` the XOR of the ids at ``seq`` (the tip's id when not
forked). Two replicas hold the same entries of an author exactly when their
heads agree (up to XOR collisions, which need a signing member to grind hashes
and would only hide a fork from the digest, never forge an entry). The digest
is a hash over all heads, so equal digests mean equal logs at a glance.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Mapping

from p2pgrid.ledger.codec import HASH_LEN
from p2pgrid.ledger.entry import Author

DIGEST_TAG = b"p2pgrid/log-digest/v1"
ZERO_ACC = bytes(HASH_LEN)


def xor32(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(HASH_LEN, "big")


@dataclasses.dataclass(frozen=True, slots=True)
class AuthorHead:
    """What a replica holds of one author's chain."""

    author: Author
    seq: int
    count: int
    accumulator: bytes
    tip: bytes

    @property
    def forked(self) -> bool:
        """More entries than sequence numbers: the author equivocated."""
        return self.count > self.seq


class Heads(Mapping[Author, AuthorHead]):
    """An immutable map author -> head, iterated in author order."""

    def __init__(self, heads: Iterable[AuthorHead] = ()) -> None:
        self._heads = {h.author: h for h in sorted(heads, key=lambda h: h.author)}

    def __getitem__(self, author: Author) -> AuthorHead:
        return self._heads[author]

    def __iter__(self) -> Iterator[Author]:
        return iter(self._heads)

    def __len__(self) -> int:
        return len(self._heads)

    def __repr__(self) -> str:
        return f"Heads({list(self._heads.values())!r})"

    @property
    def total(self) -> int:
        """Number of entries in the log."""
        return sum(h.count for h in self._heads.values())

    def digest(self) -> bytes:
        """SHA-256 of DIGEST_TAG then, per author in order, key|seq|count|accumulator|tip."""
        hasher = hashlib.sha256(DIGEST_TAG)
        for head in self._heads.values():
            hasher.update(head.author.key)
            hasher.update(head.seq.to_bytes(8, "big"))
            hasher.update(head.count.to_bytes(8, "big"))
            hasher.update(head.accumulator)
            hasher.update(head.tip)
        return hasher.digest()
