"""Hostile bytes from valid ones: hypothesis strategies that mutate real encodings."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

#: Values that break length fields and range checks most often.
_BOUNDARIES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1)
_OPS = ("flip", "set", "cut", "insert", "delete", "splice", "repeat", "int")


@st.composite
def _mutant(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(_OPS))
        at = draw(st.integers(0, len(data))) if data else 0
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))) :]
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        elif op == "int":
            width = draw(st.sampled_from((1, 2, 4, 8)))
            value = draw(st.sampled_from(_BOUNDARIES)) % (1 << (8 * width))
            data[at : at + width] = value.to_bytes(width, "big")
    return bytes(data)


def mutants(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Mostly mutations of ``seeds`` (real encodings), sometimes the seeds as they
    are, sometimes random bytes."""
    assert seeds, "a fuzz target needs at least one valid encoding to start from"
    return st.one_of(
        _mutant(seeds),
        _mutant(seeds),
        _mutant(seeds),
        st.sampled_from(seeds),
        st.binary(max_size=512),
    )
