"""Typed results of the Lightning layer (validated once, at the REST edge).

Money is integer: ``*_msat`` millisatoshis, ``*_sat`` satoshis. Hashes and
public keys are lowercase hex strings.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class NodeInfo(_Model):
    pubkey: str
    alias: str
    block_height: int
    synced_to_chain: bool
    num_active_channels: int
    num_pending_channels: int
    num_peers: int


class WalletBalance(_Model):
    confirmed_sat: int
    unconfirmed_sat: int


class ChannelBalance(_Model):
    local_msat: int
    remote_msat: int
    pending_open_local_msat: int


class Peer(_Model):
    pubkey: str
    address: str


class Channel(_Model):
    chan_id: int
    remote_pubkey: str
    channel_point: str
    capacity_sat: int
    local_balance_sat: int
    remote_balance_sat: int
    active: bool
    private: bool
    initiator: bool
    pending_htlcs: int


class PendingChannel(_Model):
    remote_pubkey: str
    channel_point: str
    capacity_sat: int


class InvoiceState(StrEnum):
    OPEN = "OPEN"
    SETTLED = "SETTLED"
    CANCELED = "CANCELED"
    ACCEPTED = "ACCEPTED"


class Invoice(_Model):
    payment_hash: str
    payment_request: str
    memo: str
    value_msat: int
    amt_paid_msat: int
    state: InvoiceState
    add_index: int
    settle_index: int
    creation_date: int
    expiry_s: int
    #: The preimage (hex) the node holds for the invoice: "" for a hold invoice
    #: until it is settled. Only the node's own client sees it (its macaroon).
    preimage: str = ""


class DecodedInvoice(_Model):
    destination: str
    payment_hash: str
    amount_msat: int
    timestamp: int
    expiry_s: int
    description: str

    @property
    def expires_at(self) -> int:
        return self.timestamp + self.expiry_s


class PaymentStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    INITIATED = "INITIATED"
    IN_FLIGHT = "IN_FLIGHT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class Payment(_Model):
    payment_hash: str
    status: PaymentStatus
    value_msat: int
    fee_msat: int
    preimage: str
    failure_reason: str
    creation_time_ns: int

    @property
    def total_msat(self) -> int:
        """What left the payer's channels: amount plus routing fee."""
        return self.value_msat + self.fee_msat
