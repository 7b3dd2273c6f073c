"""``struct kexec_buf`` and ``kexec_add_buffer``: the kernel's hole finder, in Python.

Mirrors kernel/kexec_file.c:

* ``kexec_add_buffer``: refuses a 17th segment (``nr_segments >=
  KEXEC_SEGMENT_MAX``, -EINVAL); ``memsz = ALIGN(memsz, PAGE_SIZE)``;
  ``buf_align = max(buf_align, PAGE_SIZE)``; then locates a hole.
* ``kexec_locate_mem_hole``: KHO scratch first when KHO is active and the
  image is not a crash image (kernel/kexec_handover.c ``kho_locate_mem_hole``,
  seed 002: "If KHO is active, only use KHO scratch memory"); otherwise
  ``kexec_walk_resources`` (crash images walk only ``crashk_res``; others walk
  "System RAM" bottom-up, or top-down with ``walk_system_ram_res_rev`` since
  v6.8) or ``kexec_walk_memblock`` on CONFIG_ARCH_KEEP_MEMBLOCK architectures.
  -EADDRNOTAVAIL when nothing fits.
* ``locate_mem_hole_callback``: skips IORESOURCE_SYSRAM_DRIVER_MANAGED
  ranges, ranges smaller than memsz, ranges outside [buf_min, buf_max].
* ``locate_mem_hole_top_down``: start at ``min(end, buf_max) - memsz + 1``
  (before v6.8: ``- memsz``, one byte lower, commit "kexec_file: fix
  incorrect temp_start value in locate_mem_hole_top_down()"), ALIGN_DOWN,
  give up below ``start`` or ``buf_min``; on a clash with a placed segment
  step down a page and align again.
* ``locate_mem_hole_bottom_up``: start at ``max(start, buf_min)``, ALIGN,
  give up past ``end`` or ``buf_max``; on a clash step up a page.

The kernel steps a page at a time past a clash; because every candidate is
aligned, the first candidate clear of a segment is computed directly here
(the same address, without the loop), and placed segments are kept sorted so
a clash is found by bisection.  Walks start at the first range that can
contain buf_min/buf_max (bisection too), so 100k ranges cost one pass at most.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

from ..machine.ranges import PAGE_SIZE, U64_MAX, Range, align_down, align_up, is_power_of_two

KEXEC_SEGMENT_MAX = 16  # include/linux/kexec.h


@dataclass(frozen=True)
class KexecBuf:
    """The placement request of one buffer, after ``struct kexec_buf``."""

    role: str
    bufsz: int
    memsz: int
    buf_align: int = PAGE_SIZE
    buf_min: int = 0
    buf_max: int = U64_MAX
    top_down: bool = False
    buffer: bytes | memoryview | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return self.bufsz


@dataclass(frozen=True)
class Segment:
    """One ``struct kexec_segment``: where ``buffer`` (``bufsz`` bytes) goes, and how much memory it takes.

    ``buffer`` is None when the planner knows the size but not the bytes (the
    kernel's own purgatory, boot_params it fills at load time); ``null`` marks
    a Xen segment with a null guest handle (memory only, nothing copied);
    ``offset`` is where in the first page the buffer starts (the
    ``dest_offset`` Xen's CRASH_EFI series adds for segment 0, seed 000).
    """

    role: str
    mem: int
    memsz: int
    bufsz: int
    buffer: bytes | memoryview | None = field(default=None, repr=False, compare=False)
    null: bool = False
    offset: int = 0

    @property
    def range(self) -> Range:
        return Range(self.mem, self.memsz)

    @property
    def end(self) -> int:
        return self.mem + self.memsz

    @property
    def buf(self) -> bytes:
        """The bytes that are copied (``bufsz`` of ``buffer``), as a copy; empty when unknown."""
        data = self.buffer or b""
        if isinstance(data, bytes) and len(data) == self.bufsz:
            return data
        return bytes(memoryview(data)[:self.bufsz])

    @property
    def view(self) -> bytes | memoryview:
        """The same bytes as :attr:`buf` without copying them (a view of a mapped file is
        not even read): what ``kexec_load`` points the kernel at."""
        data = self.buffer if self.buffer is not None else b""
        return data if len(data) == self.bufsz else memoryview(data)[:self.bufsz]

    @property
    def sha256(self) -> str | None:
        """SHA-256 of the bytes that will land: the buffer, zero-filled to memsz (as the purgatory checks).

        Computed on each use, never kept: hashing reads every page of the buffer.
        """
        if self.buffer is None:
            return None
        import hashlib  # only a view that shows hashes (--json) hashes
        view = self.view
        h = hashlib.sha256(view)
        pad = self.memsz - len(view)
        chunk = bytes(min(pad, 1 << 20))
        while pad > 0:
            n = min(pad, len(chunk))
            h.update(chunk[:n])
            pad -= n
        return h.hexdigest()


@dataclass(frozen=True)
class Walk:
    """The ranges one placement walks, and in which order the kernel visits them.

    ``order`` is "rev-if-top-down" (``walk_system_ram_res_rev`` since 6.8,
    ``for_each_free_mem_range_reverse``): ascending, but descending for
    top-down buffers; "ascending" (``walk_system_ram_res`` before 6.8, even
    for top-down buffers); or "given" (KHO scratch, in ``kho_scratch[]``
    order).  ``ranges`` are sorted and disjoint unless order is "given".
    """

    name: str
    ranges: tuple[Range, ...]
    order: str = "rev-if-top-down"


class Placer:
    """The segments of one image being built, and ``kexec_add_buffer`` on them."""

    def __init__(self, *, page_size: int = PAGE_SIZE, exact_top_down: bool = True,
                 max_segments: int | None = KEXEC_SEGMENT_MAX) -> None:
        self.page_size = page_size
        self.exact_top_down = exact_top_down
        self.max_segments = max_segments
        self.segments: list[Segment] = []
        self._starts: list[int] = []
        self._by_start: list[Segment] = []

    # -- segments ---------------------------------------------------------------

    def add_fixed(self, segment: Segment) -> Segment:
        """A segment whose address the caller chose (``kbuf->mem`` already set)."""
        self._insert(segment)
        return segment

    def _insert(self, segment: Segment) -> None:
        self.segments.append(segment)
        i = bisect.bisect_left(self._starts, segment.mem)
        self._starts.insert(i, segment.mem)
        self._by_start.insert(i, segment)

    def remove_last(self) -> Segment:
        seg = self.segments.pop()
        i = self._by_start.index(seg)
        del self._starts[i], self._by_start[i]
        return seg

    def clash(self, start: int, end: int) -> Segment | None:
        """``kimage_is_destination_range``: the placed segment overlapping [start, end), if any."""
        i = bisect.bisect_left(self._starts, end)
        for j in range(i - 1, -1, -1):  # at most KEXEC_SEGMENT_MAX-odd entries
            seg = self._by_start[j]
            if seg.end > start and seg.memsz:
                return seg
        return None

    # -- kexec_add_buffer ---------------------------------------------------------

    def add(self, kbuf: KexecBuf, walks: Sequence[Walk]) -> Segment | None:
        """Place ``kbuf`` in the first walk that has room; None when none has (-EADDRNOTAVAIL)."""
        if self.max_segments is not None and len(self.segments) >= self.max_segments:
            raise SegmentLimit(kbuf.role, len(self.segments), self.max_segments)
        memsz = align_up(kbuf.memsz, self.page_size)
        align = max(kbuf.buf_align, self.page_size)
        if not is_power_of_two(align):
            raise ValueError(f"{kbuf.role}: alignment {align:#x} is not a power of two")
        for walk in walks:
            mem = self._walk(walk, memsz, align, kbuf)
            if mem is not None:
                seg = Segment(kbuf.role, mem, memsz, kbuf.bufsz, kbuf.buffer)
                self._insert(seg)
                return seg
        return None

    def _walk(self, walk: Walk, memsz: int, align: int, kbuf: KexecBuf) -> int | None:
        ranges = walk.ranges
        if walk.order == "given":
            order: Sequence[int] = range(len(ranges))
        elif kbuf.top_down and walk.order == "rev-if-top-down":
            # Start with the last range whose start <= buf_max, going down.
            hi = bisect.bisect_right(ranges, Range(kbuf.buf_max, U64_MAX)) - 1
            order = range(hi, -1, -1)
        else:
            lo = bisect.bisect_left(ranges, Range(kbuf.buf_min, 0))
            order = range(max(lo - 1, 0), len(ranges))
        for i in order:
            r = ranges[i]
            if r.size < memsz or r.last < kbuf.buf_min or r.start > kbuf.buf_max:
                continue
            mem = (self._top_down(r, memsz, align, kbuf) if kbuf.top_down
                   else self._bottom_up(r, memsz, align, kbuf))
            if mem is not None:
                return mem
        return None

    def _top_down(self, r: Range, memsz: int, align: int, kbuf: KexecBuf) -> int | None:
        temp_end = min(r.last, kbuf.buf_max)
        first = temp_end - memsz + (1 if self.exact_top_down else 0)
        if first < 0:
            return None  # the kernel's unsigned arithmetic would wrap here; nothing fits
        candidate = align_down(first, align)
        while True:
            if candidate < r.start or candidate < kbuf.buf_min:
                return None
            seg = self.clash(candidate, candidate + memsz)
            if seg is None:
                return candidate
            # Stepping down a page at a time and re-aligning reaches this address first.
            if seg.mem < memsz:
                return None
            candidate = align_down(seg.mem - memsz, align)

    def _bottom_up(self, r: Range, memsz: int, align: int, kbuf: KexecBuf) -> int | None:
        candidate = align_up(max(r.start, kbuf.buf_min), align)
        while True:
            last = candidate + memsz - 1
            if last > r.last or last > kbuf.buf_max:
                return None
            seg = self.clash(candidate, candidate + memsz)
            if seg is None:
                return candidate
            candidate = align_up(seg.end, align)


class SegmentLimit(Exception):
    """``kexec_add_buffer`` refuses more than KEXEC_SEGMENT_MAX segments (-EINVAL)."""

    def __init__(self, role: str, count: int, limit: int) -> None:
        self.role, self.count, self.limit = role, count, limit
        super().__init__(f"{role} would be segment {count + 1}; the limit is {limit}")
