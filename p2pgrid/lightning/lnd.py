"""An asyncio client for lnd's REST API (httpx), implementing ``LightningNode``.

TLS is verified against the node's own ``tls.cert``; the admin macaroon is read
from disk and sent as ``Grpc-Metadata-macaroon``. Every call has a deadline on
the whole call (not only per socket read: a node stopped by SIGSTOP accepts TCP
connections and never answers): a unary call :data:`LND_CALL_TIMEOUT_S`, a
payment lnd's own payment timeout plus :data:`PAYMENT_GRACE_S`, tracking a
payment :data:`TRACK_TIMEOUT_S`. A call that runs out of time raises
:class:`NodeUnreachable` (retryable), like a refused connection or a node still
starting. Only ``/v1/invoices/subscribe`` has no deadline: it is a stream that
its owner ends. Streaming calls (``/v2/router/send``, ``/v1/invoices/subscribe``)
return one JSON object per line, ``{"result": ...}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import secrets
import ssl
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from p2pgrid.errors import ConfigError
from p2pgrid.lightning.errors import (
    AuthError,
    InvoiceError,
    InvoiceExists,
    InvoiceExpired,
    LightningError,
    LndApiError,
    LndFilesError,
    NodeUnreachable,
    PaymentFailed,
)
from p2pgrid.lightning.models import (
    Channel,
    ChannelBalance,
    DecodedInvoice,
    Invoice,
    NodeInfo,
    Payment,
    PaymentStatus,
    Peer,
    PendingChannel,
    WalletBalance,
)
from p2pgrid.secretfile import InsecureSecretFile, read_secret

log = logging.getLogger(__name__)

LND_CALL_TIMEOUT_S = 30.0
"""Deadline of one unary REST call."""
DECODED_KEPT = 256
"""Decoded invoices a client keeps (the most recently used), so that paying an
invoice just checked does not decode it on the node again."""
PAYMENT_GRACE_S = 30.0
"""How much longer than lnd's own payment timeout we wait on a payment stream."""
STREAM_END_S = 1.0
"""How long a payment stream (``/v2/router/send``, ``/v2/router/track``) is read on
after its final update for its end (lnd ends it right after), so that its connection
goes back to the client's pool; a stream not ended by then is closed, and its
connection with it (0: closed at the final update, as before 2026-12-02)."""
TRACK_TIMEOUT_S = 120.0
"""Deadline of tracking one payment to its final state (an HTLC held by a stalled
hop can take longer: the caller then tracks again later, by payment hash)."""
KEYSEND_RECORD = "5482373484"
HOLD_CLTV_DELTA = 80
"""The final CLTV delta (blocks) of a hold invoice: lnd cancels an ACCEPTED hold
invoice before its HTLC's expiry comes near, so a payee that never settles nor
cancels holds the payer's sats at most about this many blocks."""
"""The TLV record type that carries a keysend preimage."""

_ALREADY_PAID = "invoice is already paid"
_INVOICE_EXISTS = "invoice with payment hash already exists"
_ALREADY_SETTLED = "invoice already settled"
_IN_FLIGHT = "payment is in transition"
_EXPIRED = "invoice expired"
_NOT_READY = (
    "in the process of starting up",
    "not yet ready",
    "waiting to start",
    "server is still",
    "wallet locked",  # a restarting lnd, until --noseedbackup unlocks it
)

Json = dict[str, Any]
#: A call's phases that each have httpx's deadline (connect, write, read): the
#: whole call is bounded by this many times the per-phase deadline.
_PHASES = 3

#: Longest payment request lnd decodes (zpay32's limit); anything longer is refused here.
MAX_BOLT11_CHARS = 7089
#: A BOLT11 payment request: ``ln`` + currency + optional amount, ``1``, bech32 data.
#: One case only (bech32); checked before the string goes anywhere near a URL.
_BOLT11 = re.compile(r"ln[a-z0-9]{1,24}1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{104,}")
_HASH_HEX = re.compile(r"[0-9a-f]{64}")


def _is_final(raw: Json) -> bool:
    """Whether a payment update of lnd is the payment's last (succeeded or failed)."""
    return _parse_payment(raw).status in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)


def check_bolt11(payment_request: str) -> str:
    """``payment_request`` in lower case if it is shaped like a BOLT11 invoice;
    else :class:`InvoiceError` (so a peer's string never reaches lnd's URL path
    as ``../getinfo`` or with control characters)."""
    if len(payment_request) > MAX_BOLT11_CHARS:
        raise InvoiceError(f"payment request of {len(payment_request)} chars is too long")
    lowered = payment_request.lower()
    if payment_request not in (lowered, payment_request.upper()):
        raise InvoiceError("payment request mixes upper and lower case")
    if not _BOLT11.fullmatch(lowered):
        raise InvoiceError(f"not a BOLT11 payment request: {payment_request[:40]!r}")
    return lowered


def check_payment_hash(payment_hash: str) -> str:
    """A payment hash as 64 lower-case hex digits; else :class:`InvoiceError`."""
    if not _HASH_HEX.fullmatch(payment_hash):
        raise InvoiceError(f"not a payment hash: {payment_hash[:70]!r}")
    return payment_hash


@dataclass(frozen=True)
class LndEndpoint:
    """Where an lnd node's REST API is and how to authenticate to it."""

    name: str
    rest_host: str
    rest_port: int
    tls_cert: Path
    macaroon: Path

    @property
    def base_url(self) -> str:
        return f"https://{self.rest_host}:{self.rest_port}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _b64url(hex_value: str) -> str:
    return base64.urlsafe_b64encode(bytes.fromhex(hex_value)).decode()


def _txid_from_bytes(b64: str) -> str:
    """lnd sends funding txids as bytes in internal order; txids are shown reversed."""
    return base64.b64decode(b64)[::-1].hex()


def _parse_invoice(raw: Mapping[str, Any]) -> Invoice:
    return Invoice(
        payment_hash=_b64_to_hex(raw["r_hash"]),
        payment_request=raw.get("payment_request", ""),
        memo=raw.get("memo", ""),
        value_msat=int(raw.get("value_msat", 0)),
        amt_paid_msat=int(raw.get("amt_paid_msat", 0)),
        state=raw.get("state", "OPEN"),
        add_index=int(raw.get("add_index", 0)),
        settle_index=int(raw.get("settle_index", 0)),
        creation_date=int(raw.get("creation_date", 0)),
        expiry_s=int(raw.get("expiry", 0)),
        preimage=_b64_to_hex(raw["r_preimage"]) if raw.get("r_preimage") else "",
    )


def _parse_payment(raw: Mapping[str, Any]) -> Payment:
    reason = raw.get("failure_reason", "FAILURE_REASON_NONE")
    return Payment(
        payment_hash=raw["payment_hash"],
        status=raw.get("status", "UNKNOWN"),
        value_msat=int(raw.get("value_msat", 0)),
        fee_msat=int(raw.get("fee_msat", 0)),
        preimage=raw.get("payment_preimage", ""),
        failure_reason=reason.removeprefix("FAILURE_REASON_"),
        creation_time_ns=int(raw.get("creation_time_ns", 0)),
    )


class LndClient:
    """One lnd node over REST. Use as ``async with LndClient(endpoint) as node:``."""

    def __init__(
        self, endpoint: LndEndpoint, *, call_timeout_s: float = LND_CALL_TIMEOUT_S
    ) -> None:
        self.endpoint = endpoint
        #: Deadline of one unary call (:data:`LND_CALL_TIMEOUT_S` unless the owner
        #: of the client needs an answer sooner, e.g. a health probe).
        self.call_timeout_s = call_timeout_s
        self._client: httpx.AsyncClient | None = None
        #: Invoices this node decoded, by payment request (a BOLT11 string decodes to
        #: the same fields every time): :meth:`pay_invoice` of an invoice the caller
        #: just checked needs no second round trip. At most :data:`DECODED_KEPT`.
        self._decoded: OrderedDict[str, DecodedInvoice] = OrderedDict()

    async def __aenter__(self) -> LndClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Read the cert and macaroon and prepare the HTTP client."""
        if self._client is not None:
            return
        try:
            macaroon = read_secret(self.endpoint.macaroon).hex()  # refused if others may read it
            ctx = ssl.create_default_context(cafile=str(self.endpoint.tls_cert))
        except InsecureSecretFile:
            raise
        except (OSError, ssl.SSLError, ConfigError) as exc:
            raise LndFilesError(
                f"{self.endpoint.name}: cannot load TLS cert or macaroon: {exc}"
            ) from exc
        self._client = httpx.AsyncClient(
            base_url=self.endpoint.base_url,
            verify=ctx,
            headers={"Grpc-Metadata-macaroon": macaroon},
            timeout=httpx.Timeout(self.call_timeout_s),
        )

    async def aclose(self) -> None:
        """Close the HTTP client; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- transport -------------------------------------------------------------------------

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise NodeUnreachable(f"{self.endpoint.name}: client is not open")
        return self._client

    def _error(self, status: int, body: bytes) -> LndApiError | AuthError | NodeUnreachable:
        try:
            payload = json.loads(body)
            message = str(payload.get("message") or payload.get("error") or body[:200])
            code = int(payload.get("code", 0))
        except (ValueError, AttributeError):
            message, code = body[:200].decode(errors="replace"), 0
        name = self.endpoint.name
        if any(s in message for s in _NOT_READY):
            return NodeUnreachable(f"{name}: {message}")
        if status in (401, 403) or "macaroon" in message or "verification failed" in message:
            return AuthError(f"{name}: {message}")
        return LndApiError(f"{name}: {message}", status=status, code=code)

    def _wrap_transport(self, exc: httpx.HTTPError) -> NodeUnreachable | AuthError:
        name = self.endpoint.name
        if isinstance(exc.__cause__, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return AuthError(f"{name}: TLS verification failed: {exc}")
        return NodeUnreachable(f"{name}: {type(exc).__name__}: {exc}")

    def _timed_out(self, method: str, path: str, timeout_s: float) -> NodeUnreachable:
        what = path.split("?")[0]
        if what.startswith("/v1/payreq/") or what.startswith("/v1/invoice/"):
            what = what.rsplit("/", 1)[0] + "/..."
        return NodeUnreachable(f"{self.endpoint.name}: {method} {what}: no answer in {timeout_s}s")

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Json:
        try:
            # httpx's own deadlines (each phase: call_timeout_s) end a call cleanly;
            # this one bounds the sum of the phases.
            async with asyncio.timeout(self.call_timeout_s * _PHASES):
                response = await self._http.request(method, path, json=body, params=params)
        except TimeoutError as exc:
            raise self._timed_out(method, path, self.call_timeout_s * _PHASES) from exc
        except httpx.InvalidURL as exc:  # not an HTTPError: a bug of ours, never sent
            raise LndApiError(f"{self.endpoint.name}: invalid URL for {method}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise self._timed_out(method, path, self.call_timeout_s) from exc
        except httpx.HTTPError as exc:
            raise self._wrap_transport(exc) from exc
        if response.status_code >= 400:
            raise self._error(response.status_code, response.content)
        result: Json = response.json()
        return result

    async def _stream(
        self, method: str, path: str, *, body: Json | None = None, read_timeout_s: float | None
    ) -> AsyncGenerator[Json, None]:
        timeout = httpx.Timeout(self.call_timeout_s, read=read_timeout_s)
        try:
            async with self._http.stream(method, path, json=body, timeout=timeout) as response:
                if response.status_code >= 400:
                    raise self._error(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        err = message["error"]
                        raise self._error(int(err.get("http_code", 500)), json.dumps(err).encode())
                    yield message["result"]
        except httpx.InvalidURL as exc:
            raise LndApiError(f"{self.endpoint.name}: invalid URL for {method}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise self._wrap_transport(exc) from exc

    async def _until_final(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        read_timeout_s: float | None,
        final: Callable[[Json], bool],
    ) -> Json | None:
        """The first message of a stream for which ``final`` holds (None if the stream
        ends without one), once the stream has ended.

        The rest of the stream is read, at most :data:`STREAM_END_S` (lnd ends a
        payment stream right after its final update): httpx closes the connection
        of a response closed before its end, so returning at the final update
        would cost the client's next call a new TCP connection and TLS handshake
        (CPU on both sides, and round trips before the call is sent)."""
        messages = self._stream(method, path, body=body, read_timeout_s=read_timeout_s)
        try:
            async for message in messages:
                if final(message):
                    if STREAM_END_S > 0:  # 0: closed at once (a benchmark's comparison)
                        with contextlib.suppress(TimeoutError, LightningError):
                            async with asyncio.timeout(STREAM_END_S):
                                async for _ in messages:
                                    pass  # after the final update: nothing lnd sends matters
                    return message
            return None
        finally:
            await messages.aclose()

    # -- node ------------------------------------------------------------------------------

    async def get_info(self) -> NodeInfo:
        raw = await self._call("GET", "/v1/getinfo")
        return NodeInfo(
            pubkey=raw["identity_pubkey"],
            alias=raw.get("alias", ""),
            block_height=int(raw.get("block_height", 0)),
            synced_to_chain=bool(raw.get("synced_to_chain", False)),
            num_active_channels=int(raw.get("num_active_channels", 0)),
            num_pending_channels=int(raw.get("num_pending_channels", 0)),
            num_peers=int(raw.get("num_peers", 0)),
        )

    async def new_address(self) -> str:
        raw = await self._call("GET", "/v1/newaddress", params={"type": "WITNESS_PUBKEY_HASH"})
        return str(raw["address"])

    async def wallet_balance(self) -> WalletBalance:
        raw = await self._call("GET", "/v1/balance/blockchain")
        return WalletBalance(
            confirmed_sat=int(raw.get("confirmed_balance", 0)),
            unconfirmed_sat=int(raw.get("unconfirmed_balance", 0)),
        )

    async def channel_balance(self) -> ChannelBalance:
        raw = await self._call("GET", "/v1/balance/channels")

        def msat(key: str) -> int:
            return int(raw.get(key, {}).get("msat", 0))

        return ChannelBalance(
            local_msat=msat("local_balance"),
            remote_msat=msat("remote_balance"),
            pending_open_local_msat=msat("pending_open_local_balance"),
        )

    # -- peers and channels ----------------------------------------------------------------

    async def connect_peer(self, pubkey: str, host: str) -> None:
        body = {"addr": {"pubkey": pubkey, "host": host}, "perm": False, "timeout": "20"}
        try:
            await self._call("POST", "/v1/peers", body=body)
        except LndApiError as exc:
            if "already connected" not in str(exc):
                raise

    async def list_peers(self) -> list[Peer]:
        raw = await self._call("GET", "/v1/peers")
        return [Peer(pubkey=p["pub_key"], address=p["address"]) for p in raw.get("peers", [])]

    async def open_channel(
        self, pubkey: str, local_sat: int, *, push_sat: int = 0, private: bool = True
    ) -> str:
        """Open a channel; returns its channel point ``txid:index`` once broadcast."""
        body = {
            "node_pubkey": _b64(bytes.fromhex(pubkey)),
            "local_funding_amount": str(local_sat),
            "push_sat": str(push_sat),
            "private": private,
        }
        raw = await self._call("POST", "/v1/channels", body=body)
        txid = raw.get("funding_txid_str") or _txid_from_bytes(raw["funding_txid_bytes"])
        return f"{txid}:{int(raw.get('output_index', 0))}"

    async def list_channels(self) -> list[Channel]:
        raw = await self._call("GET", "/v1/channels")
        return [
            Channel(
                chan_id=int(c["chan_id"]),
                remote_pubkey=c["remote_pubkey"],
                channel_point=c["channel_point"],
                capacity_sat=int(c.get("capacity", 0)),
                local_balance_sat=int(c.get("local_balance", 0)),
                remote_balance_sat=int(c.get("remote_balance", 0)),
                active=bool(c.get("active", False)),
                private=bool(c.get("private", False)),
                initiator=bool(c.get("initiator", False)),
                pending_htlcs=len(c.get("pending_htlcs", [])),
            )
            for c in raw.get("channels", [])
        ]

    async def channel_routable(self, chan_id: int) -> bool:
        """True once this node's graph holds the channel with both sides' policies."""
        try:
            raw = await self._call("GET", f"/v1/graph/edge/{chan_id}")
        except LndApiError:
            return False
        return bool(raw.get("node1_policy")) and bool(raw.get("node2_policy"))

    async def pending_channels(self) -> list[PendingChannel]:
        raw = await self._call("GET", "/v1/channels/pending")
        return [
            PendingChannel(
                remote_pubkey=p["channel"]["remote_node_pub"],
                channel_point=p["channel"]["channel_point"],
                capacity_sat=int(p["channel"].get("capacity", 0)),
            )
            for p in raw.get("pending_open_channels", [])
        ]

    async def close_channel(self, channel_point: str, *, force: bool = False) -> str:
        """Start a close; returns the closing txid once broadcast (mine to confirm)."""
        txid, index = channel_point.split(":")
        path = f"/v1/channels/{txid}/{index}?force={'true' if force else 'false'}"
        try:
            async with asyncio.timeout(LND_CALL_TIMEOUT_S):
                async for update in self._stream("DELETE", path, read_timeout_s=LND_CALL_TIMEOUT_S):
                    pending = update.get("close_pending")
                    if pending:
                        return _txid_from_bytes(pending["txid"])
        except TimeoutError as exc:
            raise self._timed_out("DELETE", "/v1/channels", self.call_timeout_s * _PHASES) from exc
        raise LndApiError(f"{self.endpoint.name}: close of {channel_point} gave no pending update")

    # -- invoices --------------------------------------------------------------------------

    async def add_invoice(
        self,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        private: bool = False,
        preimage: bytes | None = None,
    ) -> Invoice:
        """Create an invoice. ``private`` adds route hints for private channels.

        With a ``preimage`` (32 bytes) the payment hash is its SHA-256, so the same
        preimage always names the same invoice: adding it again returns the
        invoice that exists (in whatever state: it may be settled or cancelled)
        if amount and memo match, instead of a second one, and raises
        :class:`InvoiceExists` (carrying it) if they do not.
        """
        if amount_msat <= 0:
            raise InvoiceError(f"invoice amount must be positive, got {amount_msat} msat")
        body: dict[str, object] = {
            "value_msat": str(amount_msat),
            "memo": memo,
            "expiry": str(expiry_s),
            "private": private,
        }
        if preimage is not None:
            if len(preimage) != 32:
                raise InvoiceError("an invoice preimage is 32 bytes")
            body["r_preimage"] = base64.b64encode(preimage).decode()
        try:
            raw = await self._call("POST", "/v1/invoices", body=body)
        except LndApiError as exc:
            if preimage is None or _INVOICE_EXISTS not in str(exc):
                raise
            existing = await self.lookup_invoice(hashlib.sha256(preimage).hexdigest())
            if existing.value_msat != amount_msat or existing.memo != memo:
                raise InvoiceExists(
                    f"{self.endpoint.name}: invoice {existing.payment_hash[:12]} exists with "
                    f"{existing.value_msat} msat / {existing.memo!r}, not {amount_msat} / {memo!r}",
                    existing=existing,
                ) from exc
            return existing
        return await self.lookup_invoice(_b64_to_hex(raw["r_hash"]))

    async def decode_invoice(self, payment_request: str) -> DecodedInvoice:
        """Decode on the node; :class:`InvoiceError` if it is not a BOLT11 invoice.
        The node's answer for one payment request is kept (the same string decodes
        to the same fields): it is asked again only for a request it has not decoded
        lately."""
        payment_request = check_bolt11(payment_request)
        kept = self._decoded.get(payment_request)
        if kept is not None:
            self._decoded.move_to_end(payment_request)
            return kept
        decoded = await self._decode(payment_request)
        self._decoded[payment_request] = decoded
        while len(self._decoded) > DECODED_KEPT:
            self._decoded.popitem(last=False)
        return decoded

    async def _decode(self, payment_request: str) -> DecodedInvoice:
        try:
            raw = await self._call("GET", f"/v1/payreq/{quote(payment_request, safe='')}")
        except LndApiError as exc:
            raise InvoiceError(f"{self.endpoint.name}: cannot decode invoice: {exc}") from exc
        return DecodedInvoice(
            destination=raw["destination"],
            payment_hash=raw["payment_hash"],
            amount_msat=int(raw.get("num_msat", 0)),
            timestamp=int(raw.get("timestamp", 0)),
            expiry_s=int(raw.get("expiry", 0)),
            description=raw.get("description", ""),
        )

    async def lookup_invoice(self, payment_hash: str) -> Invoice:
        path = f"/v1/invoice/{check_payment_hash(payment_hash)}"
        return _parse_invoice(await self._call("GET", path))

    async def list_invoices(self) -> list[Invoice]:
        raw = await self._call("GET", "/v1/invoices", params={"num_max_invoices": 100000})
        return [_parse_invoice(i) for i in raw.get("invoices", [])]

    async def cancel_invoice(self, payment_hash: str) -> None:
        """Cancel an invoice that is not settled; an ACCEPTED hold invoice's HTLCs
        are failed back (the payer's sats return, its payment FAILED)."""
        body = {"payment_hash": _b64(bytes.fromhex(check_payment_hash(payment_hash)))}
        await self._call("POST", "/v2/invoices/cancel", body=body)

    async def add_hold_invoice(
        self,
        payment_hash: str,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        cltv_expiry: int = HOLD_CLTV_DELTA,
        private: bool = False,
    ) -> Invoice:
        """A hold invoice for ``payment_hash`` (the caller keeps the preimage): a
        payment to it stays ACCEPTED, the payer's HTLC locked, until
        :meth:`settle_invoice` (with the preimage) or :meth:`cancel_invoice`.
        ``cltv_expiry`` (blocks) bounds how long a payee that does neither can
        hold it: lnd cancels an accepted hold invoice that nears it.

        Adding the same hash again returns the invoice that exists (if amount and
        memo match; else :class:`InvoiceExists`), so the call is safe to retry.
        """
        if amount_msat <= 0:
            raise InvoiceError(f"invoice amount must be positive, got {amount_msat} msat")
        body: dict[str, object] = {
            "hash": _b64(bytes.fromhex(check_payment_hash(payment_hash))),
            "value_msat": str(amount_msat),
            "memo": memo,
            "expiry": str(expiry_s),
            "cltv_expiry": str(cltv_expiry),
            "private": private,
        }
        try:
            await self._call("POST", "/v2/invoices/hodl", body=body)
        except LndApiError as exc:
            if _INVOICE_EXISTS not in str(exc):
                raise
            existing = await self.lookup_invoice(payment_hash)
            if existing.value_msat != amount_msat or existing.memo != memo:
                raise InvoiceExists(
                    f"{self.endpoint.name}: invoice {payment_hash[:12]} exists with "
                    f"{existing.value_msat} msat / {existing.memo!r}, not {amount_msat} / {memo!r}",
                    existing=existing,
                ) from exc
            return existing
        return await self.lookup_invoice(payment_hash)

    async def settle_invoice(self, preimage: bytes) -> None:
        """Settle the ACCEPTED hold invoice of SHA-256(``preimage``): the payment
        completes. Settling a settled invoice again is a no-op; settling one that
        is OPEN or CANCELED is an :class:`LndApiError` (nothing moves)."""
        if len(preimage) != 32:
            raise InvoiceError("an invoice preimage is 32 bytes")
        try:
            await self._call("POST", "/v2/invoices/settle", body={"preimage": _b64(preimage)})
        except LndApiError as exc:
            if _ALREADY_SETTLED not in str(exc):
                raise

    async def subscribe_invoices(self, *, settle_index: int = 0) -> AsyncIterator[Invoice]:
        """Every invoice added or settled from now on (and settled after ``settle_index``).

        The stream has no read deadline; its owner ends it by closing the iterator.
        """
        path = f"/v1/invoices/subscribe?settle_index={settle_index}"
        async for raw in self._stream("GET", path, read_timeout_s=None):
            yield _parse_invoice(raw)

    # -- payments --------------------------------------------------------------------------

    async def _send(self, body: Json, payment_hash: str, timeout_s: int) -> Payment:
        body = {**body, "timeout_seconds": timeout_s, "no_inflight_updates": True}
        deadline_s = timeout_s + PAYMENT_GRACE_S
        try:
            async with asyncio.timeout(deadline_s + self.call_timeout_s * _PHASES):
                raw = await self._until_final(
                    "POST", "/v2/router/send", body=body, read_timeout_s=deadline_s, final=_is_final
                )
            if raw is not None:
                return self._final(_parse_payment(raw))
        except TimeoutError as exc:  # sent or not: the caller resolves it by payment hash
            raise self._timed_out("POST", "/v2/router/send", deadline_s) from exc
        except LndApiError as exc:
            text = str(exc)
            if _ALREADY_PAID in text:
                log.info(
                    "%s: %s... already paid; returning the first payment",
                    self.endpoint.name,
                    payment_hash[:16],
                )
                return await self.track_payment(payment_hash)
            if _IN_FLIGHT in text:
                log.info("%s: %s... in flight; tracking it", self.endpoint.name, payment_hash[:16])
                return await self.track_payment(payment_hash)
            if _EXPIRED in text:
                raise InvoiceExpired(f"{self.endpoint.name}: {text}") from exc
            raise
        return await self.track_payment(payment_hash)

    def _final(self, payment: Payment) -> Payment:
        if payment.status is PaymentStatus.FAILED:
            raise PaymentFailed(payment.payment_hash, payment.failure_reason)
        return payment

    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        """Pay an invoice and wait for the outcome. Idempotent per payment hash.

        Paying an invoice that this node already paid returns the first payment and
        sends nothing. The payment hash comes from :meth:`decode_invoice` (no round
        trip if the caller just decoded this request to check it). Raises
        :class:`PaymentFailed` (with lnd's reason), :class:`InvoiceExpired` or
        :class:`InvoiceError`.
        """
        decoded = await self.decode_invoice(payment_request)
        body = {
            "payment_request": check_bolt11(payment_request),
            "fee_limit_msat": str(fee_limit_msat),
        }
        return await self._send(body, decoded.payment_hash, timeout_s)

    async def keysend(
        self, pubkey: str, amount_msat: int, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        """Spontaneous payment to ``pubkey`` (the receiver runs ``--accept-keysend``)."""
        preimage = secrets.token_bytes(32)
        payment_hash = hashlib.sha256(preimage).hexdigest()
        body = {
            "dest": _b64(bytes.fromhex(pubkey)),
            "amt_msat": str(amount_msat),
            "payment_hash": _b64(bytes.fromhex(payment_hash)),
            "dest_custom_records": {KEYSEND_RECORD: _b64(preimage)},
            "fee_limit_msat": str(fee_limit_msat),
        }
        return await self._send(body, payment_hash, timeout_s)

    async def track_payment(
        self, payment_hash: str, *, timeout_s: float = TRACK_TIMEOUT_S
    ) -> Payment:
        """Wait for a payment's final outcome (it may still be in flight), at most
        ``timeout_s``; :class:`NodeUnreachable` if it is not final by then."""
        path = f"/v2/router/track/{_b64url(check_payment_hash(payment_hash))}"
        path += "?no_inflight_updates=true"
        try:
            async with asyncio.timeout(timeout_s + self.call_timeout_s * _PHASES):
                raw = await self._until_final(
                    "GET", path, read_timeout_s=timeout_s, final=_is_final
                )
        except TimeoutError as exc:
            raise NodeUnreachable(
                f"{self.endpoint.name}: payment {payment_hash[:16]}... not final in {timeout_s}s"
            ) from exc
        if raw is not None:
            return self._final(_parse_payment(raw))
        raise NodeUnreachable(f"{self.endpoint.name}: track of {payment_hash[:16]}... ended early")

    async def list_payments(self) -> list[Payment]:
        raw = await self._call(
            "GET", "/v1/payments", params={"include_incomplete": "true", "max_payments": 100000}
        )
        return [_parse_payment(p) for p in raw.get("payments", [])]
