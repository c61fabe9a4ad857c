"""Anti-entropy and announcements over the in-memory LoopbackNetwork (a fake
transport: no sockets; see p2pgrid.testing.loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from p2pgrid.ledger import (
    Author,
    CarryOver,
    Entry,
    LogWriter,
    MalformedError,
    MeterReading,
    Replicator,
    Share,
    SyncMisbehaviour,
    SyncProtocolError,
    wire,
)
from p2pgrid.ledger.heads import AuthorHead, Heads
from p2pgrid.ledger.sync import MAX_REQUESTS_PER_ROUND
from p2pgrid.net import PeerUnreachable
from p2pgrid.testing.loopback import LoopbackNetwork
from tests.ledger.ledger_factory import T0_MS, OpenStore, Site


async def _write(site: Site, replicator: Replicator, device: int, n: int) -> None:
    writer = LogWriter(replicator.store, site.device(device), Author.device(device))
    for _ in range(n):
        seq = replicator.store.next_position(writer.author)[0]  # one reading per interval
        ts = T0_MS + 60_000 * seq
        entry = await writer.append(MeterReading(ts, 60, 5, 50), period=1, timestamp_ms=ts)
        await replicator.publish([entry])


async def test_announcements_reach_everyone(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a, b, c = [net.join(await open_store(n)) for n in "abc"]
    await _write(site, a, 1, 3)
    await _write(site, b, 2, 2)
    assert a.store.digest() == b.store.digest() == c.store.digest()
    assert a.store.heads().total == 5 + len(site.genesis)


async def test_late_joiner_catches_up(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a = net.join(await open_store("a"))
    b = net.join(await open_store("b"))
    await _write(site, a, 1, 300)  # more than one range reply (MAX_RANGE_SEQS = 256)
    await _write(site, b, 2, 10)
    late = net.join(await open_store("late"))
    report = await late.sync_with("a")
    assert report.appended == 310
    assert report.requests == 1 + 2 + 1  # heads, device 1 in two chunks, device 2
    assert late.store.digest() == a.store.digest()
    again = await late.sync_with("b")
    assert (again.requests, again.appended) == (1, 0)


async def test_a_round_with_equal_heads_ends_after_the_heads_request(
    site: Site, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle site's periodic round: one HEADS_REQUEST, no per-author decision."""
    net = LoopbackNetwork()
    a = net.join(await open_store("a"))
    await _write(site, a, 1, 3)
    late = net.join(await open_store("late"))
    decided: list[Author] = []
    holds_all_of = late._holds_all_of

    async def spy(their: AuthorHead) -> bool:
        decided.append(their.author)
        return await holds_all_of(their)

    monkeypatch.setattr(late, "_holds_all_of", spy)
    first = await late.sync_with("a")  # different heads: decided per author, pulled
    assert first.appended == 3
    assert Author.device(1) in decided
    decided.clear()
    again = await late.sync_with("a")
    assert (again.requests, again.received, again.appended) == (1, 0, 0)
    assert decided == []


async def test_restarted_agent_catches_up(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a = net.join(await open_store("a"))
    b = net.join(await open_store("b"))
    await _write(site, a, 1, 5)
    await b.store.close()
    net.leave("b")
    await _write(site, a, 1, 5)
    await _write(site, a, 2, 3)
    b = net.join(await open_store("b"))
    assert b.store.heads()[Author.device(1)].seq == 5
    await b.sync_with("a")
    assert b.store.digest() == a.store.digest()


async def test_healed_partition_converges(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    reps = {n: net.join(await open_store(n)) for n in "abcd"}
    await _write(site, reps["a"], 1, 2)
    net.partition({"a", "b"}, {"c", "d"})
    await _write(site, reps["a"], 1, 3)
    await _write(site, reps["c"], 2, 4)
    await _write(site, reps["d"], 3, 1)
    assert reps["a"].store.digest() == reps["b"].store.digest() != reps["c"].store.digest()
    with pytest.raises(PeerUnreachable):
        await reps["a"].sync_with("c")
    net.heal()
    await reps["a"].sync_with("c")
    await reps["c"].sync_with("a")
    await reps["b"].sync_with("a")
    await reps["d"].sync_with("c")
    assert len({r.store.digest() for r in reps.values()}) == 1
    assert reps["d"].store.heads().total == 10 + len(site.genesis)


async def test_gap_after_announcement_is_pulled(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a = net.join(await open_store("a"))
    b = net.join(await open_store("b"))
    net.partition({"a"}, {"b"})
    await _write(site, a, 1, 4)  # b misses these
    net.heal()
    await _write(site, a, 1, 1)  # b gets seq 5, holds it pending, pulls 1..4 from a
    assert b.store.pending_count == 0
    assert b.store.digest() == a.store.digest()


async def test_forks_converge_and_are_flagged_everywhere(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a = net.join(await open_store("a"))
    b = net.join(await open_store("b"))
    chain = site.chain(Author.device(7))
    base = [chain.next(Share(0, i + 1, "")).raw for i in range(3)]
    fork = chain.fork(Share(0, 99, ""), at_seq=2)
    fork_child = chain.sign(Share(0, 5, ""), seq=3, prev=fork.id, ts=T0_MS + 9000)
    fork_grandchild = chain.sign(Share(0, 6, ""), seq=4, prev=fork_child.id, ts=T0_MS + 9001)
    await a.store.ingest_many(base)
    await b.store.ingest_many([base[0], fork.raw, fork_child.raw, fork_grandchild.raw])
    assert a.store.equivocators == b.store.equivocators == frozenset()
    await a.sync_with("b")
    await b.sync_with("a")
    assert a.store.digest() == b.store.digest()
    assert a.store.equivocators == b.store.equivocators == {Author.device(7)}
    assert a.store.heads().total == 6 + len(site.genesis)
    # Once equal, a round moves nothing.
    report = await a.sync_with("b")
    assert (report.requests, report.received) == (1, 0)


async def test_malformed_requests_get_an_error_reply(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a = net.join(await open_store("a"))
    for bad in (b"", b"\x09\x01", wire.encode(wire.Announce(()))):
        assert isinstance(wire.decode(await a.handle_request(bad)), wire.ErrorReply)
    assert (await a.handle_announce(b"\x01\x01", from_peer="x")).results == ()


async def test_bad_reply_is_a_retryable_protocol_error(site: Site, open_store: OpenStore) -> None:
    class Liar:
        async def request(self, peer: str, payload: bytes) -> bytes:
            return b"\x01\x04junk"

        async def publish(self, payload: bytes) -> None:
            return None

    rep = Replicator(await open_store("a"), Liar())
    with pytest.raises(SyncProtocolError):
        await rep.sync_with("liar")


def test_wire_messages_round_trip() -> None:
    heads = Heads()
    messages: list[wire.Message] = [
        wire.HeadsRequest(),
        wire.HeadsReply(heads),
        wire.RangeRequest(Author.device(3), 1, 9),
        wire.RangeReply(9, (b"a", b"bc")),
        wire.Announce((b"xyz",)),
        wire.ErrorReply("nope"),
        wire.PushedReply(3, 1),
    ]
    for msg in messages:
        assert wire.decode(wire.encode(msg)) == msg


@pytest.mark.parametrize("order", [(2, 1), (1, 1)], ids=["descending", "repeated"])
def test_heads_reply_out_of_author_order_is_malformed(order: tuple[int, int]) -> None:
    """A heads reply has one encoding: authors strictly ascending. Any other
    order would decode to the same heads and re-encode to other bytes."""
    heads = [
        AuthorHead(Author.device(i), 1, 1, bytes([i]) * 32, bytes([i + 1]) * 32) for i in (1, 2)
    ]
    canonical = wire.encode(wire.HeadsReply(Heads(heads)))
    size = (len(canonical) - 6) // 2
    records = [canonical[6 + k * size : 6 + (k + 1) * size] for k in range(2)]
    raw = canonical[:6] + b"".join(records[i - 1] for i in order)
    with pytest.raises(MalformedError, match="ascending author order"):
        wire.decode(raw)
    assert wire.decode(canonical) == wire.HeadsReply(Heads(heads))


async def test_failed_gap_pull_is_left_to_the_next_round(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a = net.join(await open_store("a"))
    b = net.join(await open_store("b"))
    chain = site.chain(Author.device(1))
    raws = [chain.next(Share(0, i + 1, "")).raw for i in range(3)]
    await a.store.ingest_many(raws)
    net.leave("a")  # b cannot reach a for the pull
    report = await b.handle_announce(wire.encode(wire.Announce((raws[2],))), from_peer="a")
    assert [r.outcome.value for r in report.results] == ["pending"]
    net.join(a.store)
    await b.sync_with("a")
    assert b.store.digest() == a.store.digest()
    assert b.store.pending_count == 0


async def test_concurrent_batches_and_queries(site: Site, open_store: OpenStore) -> None:
    store = (net := LoopbackNetwork()).join(await open_store("a")).store
    chains = [site.chain(Author.device(d)) for d in range(1, 5)]
    batches = [[c.next(Share(0, i + 1, "")).raw for i in range(30)] for c in chains]
    async with asyncio.TaskGroup() as tg:
        for batch in batches:
            tg.create_task(store.ingest_many(batch[::-1]))
            tg.create_task(store.ingest_many(batch))
            tg.create_task(net.replicas["a"].handle_request(wire.encode(wire.HeadsRequest())))
            tg.create_task(store.fetch_range(Author.device(1), 1, 30))
    assert store.heads().total == 120 + len(site.genesis)
    assert store.pending_count == 0


class _Claimer:
    """Claims an author up to seq 2**63-1, then answers ranges with ``answer``."""

    def __init__(self, author: Author, answer: Callable[[wire.RangeRequest], wire.RangeReply]):
        self.head = AuthorHead(author, 2**63 - 1, 2**63 - 1, b"\x01" * 32, b"\x02" * 32)
        self.answer = answer
        self.requests = 0

    async def request(self, peer: str, payload: bytes) -> bytes:
        self.requests += 1
        msg = wire.decode(payload)
        if isinstance(msg, wire.HeadsRequest):
            return wire.encode(wire.HeadsReply(Heads([self.head])))
        assert isinstance(msg, wire.RangeRequest)
        return wire.encode(self.answer(msg))

    async def publish(self, payload: bytes) -> None:
        return None


async def test_a_claim_answered_with_nothing_is_misbehaviour(open_store: OpenStore) -> None:
    """Once 51,437 requests in 3 s, until the 300 s round timeout: now the first empty range."""
    liar = _Claimer(Author.device(1), lambda r: wire.RangeReply(min(r.last, r.first + 255), ()))
    rep = Replicator(await open_store("a"), liar)
    with pytest.raises(SyncMisbehaviour, match="sent nothing") as caught:
        await rep.sync_with("liar")
    assert caught.value.reason == "empty_range"
    assert liar.requests <= 3  # heads, the first range (and at most one fetched ahead)


async def test_a_round_sends_a_bounded_number_of_requests(
    site: Site, open_store: OpenStore
) -> None:
    """A peer that answers every range with the same one entry, one seq at a time."""
    entry = site.chain(Author.device(1)).next(CarryOver(1)).raw
    liar = _Claimer(Author.device(1), lambda r: wire.RangeReply(r.first, (entry,)))
    rep = Replicator(await open_store("a"), liar)
    report = await rep.sync_with("liar")
    assert report.requests <= MAX_REQUESTS_PER_ROUND
    assert liar.requests <= MAX_REQUESTS_PER_ROUND + 1  # one fetched ahead
    assert report.appended == 1


# -- pushes: an ANNOUNCE sent as a request over the direct stream -------------------


async def _unpublished(site: Site, replicator: Replicator, device: int, n: int) -> list[Entry]:
    """``n`` readings of ``device`` in ``replicator``'s store, announced to nobody."""
    writer = LogWriter(replicator.store, site.device(device), Author.device(device))
    out = []
    for _ in range(n):
        seq = replicator.store.next_position(writer.author)[0]
        ts = T0_MS + 60_000 * seq
        out.append(await writer.append(MeterReading(ts, 60, 5, 50), period=1, timestamp_ms=ts))
    return out


async def test_a_push_hands_entries_over_at_once(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a, b = net.join(await open_store("a")), net.join(await open_store("b"))
    entries = await _unpublished(site, a, 1, 3)
    assert await a.push("b", entries) == wire.PushedReply(appended=3, pending=0)
    assert b.store.digest() == a.store.digest()
    assert await a.push("b", entries) == wire.PushedReply(appended=0, pending=0)  # held already


async def test_a_push_past_a_gap_is_held_pending(site: Site, open_store: OpenStore) -> None:
    net = LoopbackNetwork()
    a, b = net.join(await open_store("a")), net.join(await open_store("b"))
    first, second = await _unpublished(site, a, 1, 2)
    assert await a.push("b", [second]) == wire.PushedReply(appended=0, pending=1)
    served, report = await b.serve(wire.encode(wire.Announce((first.raw,))), "a")
    assert wire.decode(served) == wire.PushedReply(appended=2, pending=0)  # both now
    assert [e.id for e in report.appended] == [first.id, second.id]


async def test_a_forged_or_garbled_push_is_refused_and_changes_nothing(
    site: Site, open_store: OpenStore
) -> None:
    net = LoopbackNetwork()
    a, b = net.join(await open_store("a")), net.join(await open_store("b"))
    (entry,) = await _unpublished(site, a, 1, 1)
    before = b.store.digest()
    forged = bytearray(entry.raw)
    forged[-1] ^= 0x01  # the signature's last byte
    for bad, reason in ((bytes(forged), "bad_signature"), (b"\x00garbage", "malformed")):
        served, report = await b.serve(wire.encode(wire.Announce((bad,))), "a")
        assert wire.decode(served) == wire.ErrorReply(f"refused 1 of 1 pushed entries: {reason}")
        assert report.appended == ()
    for payload in (b"\x01\x05\xff", wire.encode(wire.Announce(()))):  # undecodable, empty
        assert isinstance(wire.decode(await b.handle_request(payload)), wire.ErrorReply)
    assert b.store.digest() == before
    assert b.store.heads().get(Author.device(1)) is None


async def test_a_refused_push_raises_the_receivers_reason(
    site: Site, open_store: OpenStore
) -> None:
    class Refuser:
        async def request(self, peer: str, payload: bytes) -> bytes:
            return wire.encode(wire.ErrorReply("refused 1 of 1 pushed entries: bad_signature"))

        async def publish(self, payload: bytes) -> None:
            return None

    store = await open_store("a")
    entries = await _unpublished(site, Replicator(store, Refuser()), 1, 1)
    with pytest.raises(SyncProtocolError, match="refused the push: refused 1 of 1 pushed"):
        await Replicator(store, Refuser()).push("b", entries)


async def test_a_push_answered_with_something_else_is_misbehaviour(
    site: Site, open_store: OpenStore
) -> None:
    class Liar:
        def __init__(self, reply: bytes) -> None:
            self.reply = reply

        async def request(self, peer: str, payload: bytes) -> bytes:
            return self.reply

        async def publish(self, payload: bytes) -> None:
            return None

    store = await open_store("a")
    entries = await _unpublished(site, Replicator(store, Liar(b"")), 1, 1)
    for reply, reason in (
        (wire.encode(wire.HeadsReply(Heads())), "wrong_reply"),
        (b"\x01\x07\x00", "malformed_reply"),
    ):
        with pytest.raises(SyncMisbehaviour) as caught:
            await Replicator(store, Liar(reply)).push("liar", entries)
        assert caught.value.reason == reason


def test_a_head_of_seq_0_is_malformed() -> None:
    """A peer's HEADS naming an author at seq 0 (with a count: "forked") once made
    a puller ask for the range 1..0 and fail with an error no caller expected
    (found by tests/fuzz/test_handlers.py); it is malformed at the decoder."""
    head = AuthorHead(Author.device(1), 0, 9, b"\x01" * 32, b"\x02" * 32)
    raw = wire.encode(wire.HeadsReply(Heads([head])))
    with pytest.raises(MalformedError, match="seq is at least 1"):
        wire.decode(raw)
