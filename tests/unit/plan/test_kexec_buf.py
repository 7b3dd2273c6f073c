"""kexec_add_buffer in Python against the kernel's loops, rule by rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pykexec.machine.ranges import Range
from pykexec.plan.kexec_buf import KexecBuf, Placer, Segment, SegmentLimit, Walk

from . import reference

MiB = 1 << 20


def place(placer, kbuf, ranges, order="rev-if-top-down"):
    return placer.add(kbuf, [Walk("ram", tuple(ranges), order)])


def test_top_down_takes_the_top_of_the_highest_range():
    p = Placer()
    seg = place(p, KexecBuf("x", 10, 10, top_down=True), [Range(0x1000, 0x9F000), Range(MiB, 16 * MiB)])
    assert (seg.mem, seg.memsz) == (17 * MiB - 4096, 4096)


def test_before_6_8_top_down_walks_ranges_upward_and_lands_a_page_lower():
    # 6.1: walk_system_ram_res ascending even for top-down, and temp_start = end - memsz
    p = Placer(exact_top_down=False)
    seg = place(p, KexecBuf("x", 0x5000, 0x5000, top_down=True, buf_min=0x3000),
                [Range.inclusive(0x1000, 0x9FBFF), Range.inclusive(0x100000, 0x3FFDFFFF)], order="ascending")
    assert seg.mem == 0x9A000  # "Loaded purgatory at 0x9a000" on Debian 6.1
    q = Placer(exact_top_down=False)
    assert place(q, KexecBuf("x", 0x1000, 0x1000, top_down=True), [Range(0, 0x4000)]).mem == 0x2000
    r = Placer(exact_top_down=True)
    assert place(r, KexecBuf("x", 0x1000, 0x1000, top_down=True), [Range(0, 0x4000)]).mem == 0x3000


def test_bottom_up_alignment_and_min():
    p = Placer()
    seg = place(p, KexecBuf("k", 1, 3 * MiB, buf_align=2 * MiB, buf_min=MiB), [Range(0x1000, 64 * MiB)])
    assert seg.mem == 2 * MiB and seg.memsz == 3 * MiB


def test_memsz_is_page_aligned_and_buf_max_respected():
    p = Placer()
    seg = place(p, KexecBuf("x", 5, 5, buf_max=0x7FFF, top_down=True), [Range(0, MiB)])
    assert (seg.mem, seg.memsz) == (0x7000, 0x1000)
    assert place(p, KexecBuf("y", 1, 0x9000, buf_max=0x7FFF, top_down=True), [Range(0, MiB)]) is None


def test_clashes_are_skipped_both_ways():
    p = Placer()
    p.add_fixed(Segment("a", 0x10000, 0x4000, 0))
    assert place(p, KexecBuf("x", 1, 0x2000, top_down=True), [Range(0, 0x14000)]).mem == 0xE000
    assert place(p, KexecBuf("y", 1, 0x2000), [Range(0xD000, 0x10000)]).mem == 0x14000


def test_segment_limit():
    p = Placer(max_segments=2)
    place(p, KexecBuf("a", 1, 1), [Range(0, MiB)])
    place(p, KexecBuf("b", 1, 1), [Range(0, MiB)])
    with pytest.raises(SegmentLimit):
        place(p, KexecBuf("c", 1, 1), [Range(0, MiB)])


def test_given_order_is_kept():
    p = Placer()
    seg = place(p, KexecBuf("x", 1, 1, top_down=True), [Range(8 * MiB, MiB), Range(MiB, MiB)], order="given")
    assert seg.mem == 9 * MiB - 4096


pages = st.integers(0, 64).map(lambda n: n * 4096)
range_st = st.lists(st.tuples(st.integers(0, 256), st.integers(1, 64)), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(range_st, st.lists(st.tuples(st.integers(0, 300), st.integers(1, 16)), max_size=4),
       st.integers(1, 40 * 4096), st.sampled_from([1, 4096, 8192, 2 * 4096 * 4, 65536]),
       st.integers(0, 300 * 4096), st.integers(0, 400 * 4096), st.booleans(), st.booleans(), st.booleans())
def test_matches_the_kernels_loops(raw_ranges, raw_segs, memsz, align, buf_min, buf_max, top, reverse, exact):
    # disjoint sorted page-granular ranges with odd ends, like iomem's
    ranges, cursor = [], 0
    for gap, size in raw_ranges:
        start = cursor + gap * 4096 + 0x100 * (gap % 2)
        ranges.append(Range(start, size * 4096 - 0x100 * (size % 3 == 0)))
        cursor = ranges[-1].end + 4096
    placer = Placer(exact_top_down=exact)
    segs = []
    for at, size in raw_segs:
        seg = Segment("s", at * 4096, size * 4096, 0)
        if not any(seg.range.overlaps(s.range) for s in placer.segments):
            placer.add_fixed(seg)
            segs.append((seg.mem, seg.memsz))
    kbuf = KexecBuf("x", 1, memsz, buf_align=align, buf_min=buf_min, buf_max=buf_max, top_down=top)
    got = placer.add(kbuf, [Walk("ram", tuple(ranges), "rev-if-top-down" if reverse else "ascending")])
    want = reference.locate([(r.start, r.last) for r in ranges], memsz, align, buf_min, buf_max, top, segs,
                            reverse=reverse and top, exact=exact)
    assert (None if got is None else (got.mem, got.memsz)) == want
