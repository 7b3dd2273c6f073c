"""The kernel's hole finder transcribed literally (page-stepping loops), as an oracle for tests.

kernel/kexec_file.c locate_mem_hole_top_down / locate_mem_hole_bottom_up /
locate_mem_hole_callback, with inclusive ends as the kernel keeps them.
"""

from __future__ import annotations

PAGE = 4096


def align_down(x, a):
    return x & ~(a - 1)


def align_up(x, a):
    return (x + a - 1) & ~(a - 1)


def clash(segments, start, end_incl):
    return any(end_incl >= m and start < m + sz for m, sz in segments if sz)


def top_down(start, end, memsz, align, buf_min, buf_max, segments, exact=True):
    temp_end = min(end, buf_max)
    temp_start = temp_end - memsz + (1 if exact else 0)
    if temp_start < 0:
        return None
    while True:
        temp_start = align_down(temp_start, align)
        if temp_start < start or temp_start < buf_min:
            return None
        if clash(segments, temp_start, temp_start + memsz - 1):
            temp_start -= PAGE
            continue
        return temp_start


def bottom_up(start, end, memsz, align, buf_min, buf_max, segments):
    temp_start = max(start, buf_min)
    while True:
        temp_start = align_up(temp_start, align)
        temp_end = temp_start + memsz - 1
        if temp_end > end or temp_end > buf_max:
            return None
        if clash(segments, temp_start, temp_end):
            temp_start += PAGE
            continue
        return temp_start


def locate(ranges, memsz, align, buf_min, buf_max, top, segments, *, reverse, exact=True):
    """ranges: [(start, last)], visited in order (reversed when ``reverse``)."""
    memsz = align_up(memsz, PAGE)
    align = max(align, PAGE)
    for start, last in (reversed(ranges) if reverse else ranges):
        if last - start + 1 < memsz or last < buf_min or start > buf_max:
            continue
        mem = (top_down(start, last, memsz, align, buf_min, buf_max, segments, exact) if top
               else bottom_up(start, last, memsz, align, buf_min, buf_max, segments))
        if mem is not None:
            return mem, memsz
    return None
