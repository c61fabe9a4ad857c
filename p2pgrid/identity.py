"""Site identity: who belongs to a site, checkable by anyone with no server.

A site is identified by a BIP32 extended public key (the site owner keeps the
extended private key). Device ``i`` of the site signs with the non-hardened
child key ``i`` of it, so any agent holding the site's xpub derives every
member's public key itself. Signatures are BIP340 Schnorr (64 bytes) over the
SHA-256 of the message bytes, made and checked with libsecp256k1 (coincurve).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import coincurve
from bitcoinlib.keys import HDKey

from p2pgrid.errors import ReportableError

NETWORK = "regtest"
MAX_DEVICE_INDEX = 2**31 - 1
SIGNATURE_LEN = 64
PUBKEY_LEN = 33


class IdentityError(ReportableError):
    """A key or index is malformed."""


def _digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def verify(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    """Check a BIP340 signature by the compressed secp256k1 ``pubkey``."""
    if len(pubkey) != PUBKEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        xonly = coincurve.PublicKeyXOnly(pubkey[1:])
        return bool(xonly.verify(signature, _digest(message)))
    except ValueError:
        return False


@dataclass(frozen=True)
class Signer:
    """A private key that signs; ``pubkey`` is its compressed public key."""

    secret: bytes = field(repr=False)
    pubkey: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> Signer:
        key = coincurve.PrivateKey(secret)
        return cls(secret=secret, pubkey=key.public_key.format(compressed=True))

    @classmethod
    def generate(cls) -> Signer:
        return cls.from_secret(coincurve.PrivateKey().secret)

    def sign(self, message: bytes) -> bytes:
        return bytes(coincurve.PrivateKey(self.secret).sign_schnorr(_digest(message)))


def _check_index(index: int) -> None:
    if not 0 <= index <= MAX_DEVICE_INDEX:
        raise IdentityError(f"device index {index} is outside 0..{MAX_DEVICE_INDEX}")


@dataclass(frozen=True)
class SiteIdentity:
    """The public face of a site: its xpub. Derives members' public keys."""

    xpub: str

    def __post_init__(self) -> None:
        try:
            key = HDKey(self.xpub, network=NETWORK)
        except Exception as exc:  # bitcoinlib raises several unrelated types
            raise IdentityError(f"not an extended public key: {self.xpub[:16]}...") from exc
        if key.is_private:
            raise IdentityError("a site identity must be an extended *public* key")

    @functools.cached_property
    def site_id(self) -> str:
        """A short stable name for the site: hex of SHA-256(xpub), 16 chars."""
        return hashlib.sha256(self.xpub.encode()).hexdigest()[:16]

    def device_pubkey(self, index: int) -> bytes:
        """The compressed public key of device ``index`` (non-hardened child)."""
        _check_index(index)
        return _child_pubkey(self.xpub, index)


@functools.lru_cache(maxsize=4096)
def _child_pubkey(xpub: str, index: int) -> bytes:
    child = HDKey(xpub, network=NETWORK).child_public(index)
    return bytes.fromhex(child.public_hex)


@dataclass(frozen=True)
class SiteOwner:
    """The site owner's extended private key: provisions device keys."""

    xprv: str = field(repr=False)

    @classmethod
    def generate(cls) -> SiteOwner:
        return cls(xprv=HDKey(network=NETWORK).wif_private())

    @classmethod
    def from_seed(cls, seed: bytes) -> SiteOwner:
        """Deterministic owner key from a seed (tests and demos)."""
        return cls(xprv=HDKey.from_seed(seed, network=NETWORK).wif_private())

    @functools.cached_property
    def identity(self) -> SiteIdentity:
        return SiteIdentity(xpub=HDKey(self.xprv, network=NETWORK).wif_public())

    @functools.cached_property
    def owner_signer(self) -> Signer:
        """The owner's own signing key: the master key of the site."""
        return Signer.from_secret(bytes(HDKey(self.xprv, network=NETWORK).private_byte))

    def device_signer(self, index: int) -> Signer:
        """The signing key to provision on device ``index``."""
        _check_index(index)
        child = HDKey(self.xprv, network=NETWORK).child_private(index)
        return Signer.from_secret(bytes(child.private_byte))
