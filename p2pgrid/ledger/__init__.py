"""The replicated, signed consumption log of a site (see docs/protocol-log.md)."""

from p2pgrid.ledger.bills import bill, invoices_of, metered_devices, paid_hashes
from p2pgrid.ledger.bodies import (
    ALL_DEVICES,
    Allocation,
    Body,
    BodyError,
    Budget,
    CarryOver,
    Curtailment,
    DeviceInfo,
    Dispute,
    EntryKind,
    Invoice,
    MeterReading,
    Payment,
    Role,
    Sale,
    Share,
    SiteShare,
    SiteShareIn,
)
from p2pgrid.ledger.entry import (
    MAX_ENTRY_BYTES,
    Author,
    Entry,
    decode_entry,
    sign_entry,
    site_hash,
)
from p2pgrid.ledger.errors import (
    CorruptLogError,
    LedgerError,
    MalformedError,
)
from p2pgrid.ledger.heads import AuthorHead, Heads
from p2pgrid.ledger.inefficiency import Finding, Inefficiency, consumption, inefficiencies
from p2pgrid.ledger.membership import Membership, MembershipConfig
from p2pgrid.ledger.outcome import IngestReport, IngestResult, Outcome, RejectReason
from p2pgrid.ledger.store import LogStore
from p2pgrid.ledger.sync import (
    SYNC_PROTOCOL_ID,
    Replicator,
    SyncProtocolError,
    SyncReport,
    SyncTransport,
    log_topic,
)
from p2pgrid.ledger.views import DeviceAccount, LedgerView, PeriodView, fold
from p2pgrid.ledger.writer import LogWriter

__all__ = [
    "ALL_DEVICES",
    "MAX_ENTRY_BYTES",
    "SYNC_PROTOCOL_ID",
    "Allocation",
    "Author",
    "AuthorHead",
    "Body",
    "BodyError",
    "Budget",
    "CarryOver",
    "CorruptLogError",
    "Curtailment",
    "DeviceAccount",
    "DeviceInfo",
    "Dispute",
    "Entry",
    "EntryKind",
    "Finding",
    "Heads",
    "Inefficiency",
    "IngestReport",
    "IngestResult",
    "Invoice",
    "LedgerError",
    "LedgerView",
    "LogStore",
    "LogWriter",
    "MalformedError",
    "Membership",
    "MembershipConfig",
    "MeterReading",
    "Outcome",
    "Payment",
    "PeriodView",
    "RejectReason",
    "Replicator",
    "Role",
    "Sale",
    "Share",
    "SiteShare",
    "SiteShareIn",
    "SyncProtocolError",
    "SyncReport",
    "SyncTransport",
    "bill",
    "consumption",
    "decode_entry",
    "fold",
    "inefficiencies",
    "invoices_of",
    "log_topic",
    "metered_devices",
    "paid_hashes",
    "sign_entry",
    "site_hash",
]
