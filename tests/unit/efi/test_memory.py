"""The page allocator and the memory map (UEFI 2.10 7.2), without an emulator."""

from __future__ import annotations

import pytest

from pykexec.efi import constants as c
from pykexec.efi.memory import EfiStatusError, MemoryMap, Pools

MiB = 1 << 20


def conventional(mm: MemoryMap) -> list[tuple[int, int]]:
    return [(d.start, d.end) for d in mm.descriptors() if d.type == c.CONVENTIONAL]


def status(fn, *args, **kw) -> int:
    with pytest.raises(EfiStatusError) as e:
        fn(*args, **kw)
    return e.value.status


def test_map_covers_ram_with_holes():
    mm = MemoryMap(64 * MiB)
    descs = mm.descriptors()
    assert descs[0].start == 0 and descs[-1].end == 64 * MiB
    assert all(a.end == b.start for a, b in zip(descs, descs[1:]))
    assert conventional(mm) == [(0x1000, 0xA0000), (MiB, 64 * MiB)]
    assert len(mm.pack()) == c.DESCRIPTOR_SIZE * len(descs) == mm.map_size


def test_any_pages_is_top_down_and_key_changes_with_every_allocation():
    mm = MemoryMap(64 * MiB)
    k0 = mm.key
    a = mm.allocate_pages(c.ALLOCATE_ANY_PAGES, c.LOADER_DATA, 2)
    assert a == 64 * MiB - 2 * c.PAGE and mm.key == k0 + 1
    b = mm.allocate_pages(c.ALLOCATE_ANY_PAGES, c.LOADER_DATA, 1)
    assert b == a - c.PAGE and mm.key == k0 + 2
    assert mm.find(a).type == c.LOADER_DATA


def test_max_address_is_inclusive_and_honoured():
    mm = MemoryMap(64 * MiB)
    got = mm.allocate_pages(c.ALLOCATE_MAX_ADDRESS, c.LOADER_DATA, 1, 16 * MiB - 1)
    assert got == 16 * MiB - c.PAGE
    assert mm.allocate_pages(c.ALLOCATE_MAX_ADDRESS, c.LOADER_DATA, 1, 0x9FFFF) == 0x9F000
    assert status(mm.allocate_pages, c.ALLOCATE_MAX_ADDRESS, c.LOADER_DATA, 1, 0xFFF) \
        == c.EFI_NOT_FOUND


def test_allocate_address_exact_or_not_found():
    mm = MemoryMap(64 * MiB)
    assert mm.allocate_pages(c.ALLOCATE_ADDRESS, c.LOADER_CODE, 16, 16 * MiB) == 16 * MiB
    # overlapping, unaligned, in a hole, past RAM
    assert status(mm.allocate_pages, c.ALLOCATE_ADDRESS, c.LOADER_CODE, 1, 16 * MiB + 0x1000) \
        == c.EFI_NOT_FOUND
    assert status(mm.allocate_pages, c.ALLOCATE_ADDRESS, c.LOADER_CODE, 1, 32 * MiB + 1) \
        == c.EFI_NOT_FOUND
    assert status(mm.allocate_pages, c.ALLOCATE_ADDRESS, c.LOADER_CODE, 1, 0xA0000) \
        == c.EFI_NOT_FOUND
    assert status(mm.allocate_pages, c.ALLOCATE_ADDRESS, c.LOADER_CODE, 1, 64 * MiB) \
        == c.EFI_NOT_FOUND
    assert [(d.start, d.type) for d in mm.descriptors() if d.start == 16 * MiB] \
        == [(16 * MiB, c.LOADER_CODE)]


def test_invalid_requests():
    mm = MemoryMap(64 * MiB)
    assert status(mm.allocate_pages, 3, c.LOADER_DATA, 1) == c.EFI_INVALID_PARAMETER
    assert status(mm.allocate_pages, c.ALLOCATE_ANY_PAGES, c.CONVENTIONAL, 1) \
        == c.EFI_INVALID_PARAMETER
    assert status(mm.allocate_pages, c.ALLOCATE_ANY_PAGES, 0x100, 1) == c.EFI_INVALID_PARAMETER
    assert mm.allocate_pages(c.ALLOCATE_ANY_PAGES, 0x80000001, 1)  # OS-defined types are fine
    assert status(mm.allocate_pages, c.ALLOCATE_ANY_PAGES, c.LOADER_DATA, 1 << 20) \
        == c.EFI_OUT_OF_RESOURCES


def test_free_pages_whole_partial_and_refused():
    mm = MemoryMap(64 * MiB)
    before = conventional(mm)
    a = mm.allocate_pages(c.ALLOCATE_ADDRESS, c.LOADER_DATA, 8, 16 * MiB)
    key = mm.key
    mm.free_pages(a + 2 * c.PAGE, 2)                 # a hole in the middle
    assert mm.key == key + 1
    assert mm.find(a + 2 * c.PAGE).type == c.CONVENTIONAL
    assert mm.find(a).type == mm.find(a + 4 * c.PAGE).type == c.LOADER_DATA
    assert status(mm.free_pages, a + 2 * c.PAGE, 1) == c.EFI_NOT_FOUND   # already free
    assert status(mm.free_pages, 40 * MiB, 1) == c.EFI_NOT_FOUND          # never allocated
    assert status(mm.free_pages, a + 1, 1) == c.EFI_INVALID_PARAMETER
    mm.free_pages(a, 2)
    mm.free_pages(a + 4 * c.PAGE, 4)
    assert conventional(mm) == before                # coalesced back


def test_firmware_alignment_for_images():
    mm = MemoryMap(64 * MiB)
    base = mm.allocate_pages(c.ALLOCATE_ANY_PAGES, c.LOADER_CODE, 16, align=0x10000,
                             avoid_align=2 * MiB)
    assert base % 0x10000 == 0 and base % (2 * MiB) != 0


def test_pools():
    mm = MemoryMap(64 * MiB)
    pools = Pools(mm)
    k = mm.key
    a = pools.allocate(c.LOADER_DATA, 10)
    b = pools.allocate(c.LOADER_DATA, 100)
    assert a % 16 == 0 and b % 16 == 0 and b >= a + 16
    assert mm.key > k and mm.find(a).type == c.LOADER_DATA
    big = pools.allocate(c.BS_DATA, 1 << 20)
    assert mm.find(big).type == c.BS_DATA and pools.size_of(big) == 1 << 20
    pools.release(a)
    assert pools.allocate(c.LOADER_DATA, 16) == a     # reused
    assert status(pools.release, a + 8) == c.EFI_INVALID_PARAMETER
    assert status(pools.release, 0) == c.EFI_INVALID_PARAMETER
    pools.release(big)
    assert mm.find(big).type == c.CONVENTIONAL


def test_reserve_types_a_fixed_range_that_is_never_handed_out_nor_freed():
    mm = MemoryMap(64 * MiB)
    k0 = mm.key
    mm.reserve(MiB, 0x44000, c.BS_DATA)
    assert mm.key == k0
    assert mm.find(MiB).type == c.BS_DATA and mm.find(MiB + 0x43FFF).type == c.BS_DATA
    assert mm.find(MiB + 0x44000).type == c.CONVENTIONAL
    assert status(mm.allocate_pages, c.ALLOCATE_ADDRESS, c.LOADER_DATA, 1, MiB) == c.EFI_NOT_FOUND
    assert status(mm.free_pages, MiB, 1) == c.EFI_NOT_FOUND
    assert mm.allocation_containing(MiB) is None
    # top-down allocations land where they would without it
    assert mm.allocate_pages(c.ALLOCATE_ANY_PAGES, c.LOADER_DATA, 1) == 64 * MiB - c.PAGE
    with pytest.raises(ValueError):
        mm.reserve(MiB + 0x1000, 0x1000, c.BS_DATA)        # not free any more
