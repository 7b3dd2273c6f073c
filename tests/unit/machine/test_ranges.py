"""Range arithmetic: half-open ranges, set operations, the kernel's ALIGN()."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from pykexec.machine.ranges import (Range, TypedRange, align_down, align_up, human_size, merge, subtract,
                                    total)


def test_end_and_last():
    r = Range(0x1000, 0x2000)
    assert (r.end, r.last) == (0x3000, 0x2FFF)
    assert Range.inclusive(0x1000, 0x2FFF) == r
    assert Range.span(0x1000, 0x3000) == r


@pytest.mark.parametrize("a, b, overlap", [
    (Range(0, 10), Range(10, 5), False),
    (Range(0, 10), Range(9, 5), True),
    (Range(5, 0), Range(0, 10), False),
    (Range(0, 10), Range(2, 3), True),
])
def test_overlaps(a, b, overlap):
    assert a.overlaps(b) is overlap and b.overlaps(a) is overlap


def test_minus_intersect_align():
    r = Range(0x1000, 0x9000)
    assert r.minus(Range(0x3000, 0x1000)) == (Range(0x1000, 0x2000), Range(0x4000, 0x6000))
    assert r.minus(Range(0, 0x20000)) == ()
    assert r.minus(Range(0x20000, 1)) == (r,)
    assert r.intersect(Range(0x9000, 0x5000)) == Range(0x9000, 0x1000)
    assert r.intersect(Range(0xA000, 1)) is None
    assert Range(0x1001, 0x3000).align(0x1000) == Range(0x2000, 0x2000)
    assert Range(0x1001, 0x1000).align(0x1000) is None


def test_align_is_the_kernels_mask_arithmetic():
    assert align_up(0x1001, 0x1000) == 0x2000 and align_down(0x1FFF, 0x1000) == 0x1000
    assert align_up(17, 16) == 32 and align_up(5, 0) == 5 and align_down(5, 1) == 5


def test_typed_range_names():
    assert TypedRange(0, 1, "System RAM (kmem)").driver_managed
    assert TypedRange(0, 1, "System RAM (virtio_mem)").is_system_ram
    assert not TypedRange(0, 1, "System RAM").driver_managed
    assert not TypedRange(0, 1, "Reserved").is_system_ram


def test_human_size():
    assert human_size(31 << 20) == "31 MiB" and human_size(4096) == "4 KiB" and human_size(12) == "12 bytes"


ranges = st.lists(st.builds(Range, st.integers(0, 2000), st.integers(0, 300)), max_size=20)


@given(ranges, ranges)
def test_subtract_matches_a_set_model(base, holes):
    got = subtract(base, holes)
    points = set()
    for r in base:
        points.update(range(r.start, r.end))
    for h in holes:
        points.difference_update(range(h.start, h.end))
    assert {p for r in got for p in range(r.start, r.end)} == points
    for r in got:
        assert not any(r.overlaps(h) for h in holes)
    assert got == merge(got)


@given(ranges)
def test_merge_is_disjoint_sorted_and_keeps_total(base):
    merged = merge(base)
    assert all(a.end < b.start for a, b in zip(merged, merged[1:]))
    assert total(merged) == total(base)
