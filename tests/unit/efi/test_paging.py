"""The x86-64 identity map on its own: entries as the SDM defines them, in a fake memory."""

from __future__ import annotations

import struct

import pytest

from pykexec.efi.paging import GIB, LARGE, PAGE, WILD_RESERVE, XD, IdentityMap

BASE = 0x100000
P, RW, A, D, PS = 0x1, 0x2, 0x20, 0x40, 0x80
ADDR = 0x000F_FFFF_FFFF_F000                  # bits 12..51 of an entry


class Memory(dict):
    """Sparse guest memory: page -> bytearray."""

    def write(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            page = self.setdefault((addr + i) & ~(PAGE - 1), bytearray(PAGE))
            page[(addr + i) % PAGE] = b

    def u64(self, addr: int) -> int:
        page = self.get(addr & ~(PAGE - 1), bytes(PAGE))
        return struct.unpack_from("<Q", page, addr % PAGE)[0]


def walk(mem: Memory, root: int, addr: int) -> tuple[int, bool] | None:
    """(physical address, executable) by a 4-level walk of ``addr``; None if not present."""
    table, xd = root, False
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = mem.u64(table + 8 * (addr >> shift & 511))
        if not entry & P:
            return None
        assert entry & RW and entry & A
        xd |= bool(entry & XD)
        if shift == 12 or (level == 2 and entry & PS):
            assert entry & D
            size = 1 << shift
            return (entry & ADDR & ~(size - 1)) | (addr & (size - 1)), not xd
        assert not entry & PS
        table = entry & ADDR
    raise AssertionError("unreachable")


@pytest.fixture
def built():
    mem = Memory()
    tables = IdentityMap(BASE, 2 * GIB, mem.write)
    tables.build()
    return mem, tables


def test_all_ram_is_identity_mapped_writable_and_not_executable(built):
    mem, tables = built
    assert tables.root == BASE
    for addr in (0, 0x1234, LARGE - 8, 0x7FFF_F123, 2 * GIB - 1):
        assert walk(mem, BASE, addr) == (addr, False), hex(addr)
    assert walk(mem, BASE, 2 * GIB) is None            # beyond RAM: not present
    assert mem.u64(BASE) & ADDR == BASE + PAGE          # PML4[0] -> PDPT
    assert [mem.u64(BASE + PAGE + 8 * i) & ADDR for i in range(3)] == \
        [BASE + 2 * PAGE, BASE + 3 * PAGE, 0]
    assert IdentityMap.size(2 * GIB) == (2 * (2 + 2) + 64) * PAGE
    assert IdentityMap.size(2 * GIB + 1) == (2 * (2 + 3) + 64) * PAGE


def test_the_translation_tables_make_all_ram_executable(built):
    mem, tables = built
    root = tables.translate_root
    assert root >= BASE + 4 * PAGE and root + 4 * PAGE <= BASE + IdentityMap.size(2 * GIB)
    for addr in (0, 0x1234, 0x7FFF_F123, 2 * GIB - 1):
        assert walk(mem, root, addr) == (addr, True), hex(addr)
    assert walk(mem, root, 2 * GIB) is None
    tables.allow_exec(0x1000)
    assert walk(mem, root, 0x2000) == (0x2000, True)       # the split is not theirs


def test_allow_exec_splits_one_2mib_entry_into_4kib_pages(built):
    mem, tables = built
    code = 0x7F11_C000
    spare = tables.spare
    assert tables.allow_exec(code + 0x123) is True
    assert walk(mem, BASE, code) == (code, True)
    assert walk(mem, BASE, code + PAGE) == (code + PAGE, False)
    assert walk(mem, BASE, code - PAGE) == (code - PAGE, False)
    assert tables.spare == spare - 1
    assert tables.allow_exec(code + 5 * PAGE) is True      # same region: same table
    assert tables.spare == spare - 1
    assert walk(mem, BASE, code + 5 * PAGE) == (code + 5 * PAGE, True)
    assert tables.executable(code + 8) and not tables.executable(code + PAGE)
    pde = mem.u64(BASE + 2 * PAGE + 8 * (code // LARGE))
    assert not pde & PS and not pde & XD


def test_without_page_tables_a_whole_2mib_region_becomes_executable():
    mem = Memory()
    tables = IdentityMap(BASE, GIB, mem.write, pool=WILD_RESERVE + 1)
    tables.build()
    assert tables.allow_exec(0x200000) is True
    assert tables.allow_exec(0x600000) is False             # no table left but the reserve
    assert walk(mem, BASE, 0x7FF000) == (0x7FF000, True)
    assert walk(mem, BASE, 0x800000) == (0x800000, False)
    assert tables.exec_regions == {3}
    # taking back part of that region needs a table: not exact
    assert tables.deny_exec(lambda page: page == 0x600000) is False
    # taking back all of it does not
    assert tables.deny_exec(lambda page: False) is True
    assert walk(mem, BASE, 0x600000) == (0x600000, False)
    assert walk(mem, BASE, 0x200000) == (0x200000, False)
    assert not tables.exec_regions and not tables.exec_pages


def test_deny_exec_keeps_only_what_the_predicate_keeps(built):
    mem, tables = built
    for page in (0x1000_0000, 0x1000_1000, 0x3000_0000):
        tables.allow_exec(page)
    assert tables.deny_exec(lambda page: page == 0x1000_1000) is True
    assert [walk(mem, BASE, p)[1] for p in (0x1000_0000, 0x1000_1000, 0x3000_0000)] == \
        [False, True, False]
    assert tables.exec_pages == {0x1000_1000}


def test_map_beyond_maps_one_2mib_outside_ram_on_demand(built):
    mem, tables = built
    wild = 0x4_0000_1234                                   # 16 GiB: PML4[0], PDPT[16]
    far = 0x80_0000_0000                                    # 512 GiB: PML4[1]
    assert tables.map_beyond(wild)
    assert walk(mem, BASE, wild) == (wild, True)            # any access gets through
    assert walk(mem, BASE, wild + LARGE) is None
    assert tables.map_beyond(far) and walk(mem, BASE, far) == (far, True)
    assert not tables.map_beyond(0x1000)                    # RAM is mapped already
    assert not tables.map_beyond(1 << 40)                   # beyond 40 physical address bits
    assert not tables.map_beyond(0xFFFF_8000_0000_0000)     # the upper half


def test_tables_must_be_page_aligned():
    with pytest.raises(ValueError):
        IdentityMap(BASE + 8, GIB, Memory().write)
    with pytest.raises(ValueError):
        IdentityMap(BASE, 513 * GIB, Memory().write)
    tables = IdentityMap(BASE, GIB, Memory().write)
    with pytest.raises(ValueError):
        tables.allow_exec(2 * GIB)


# -- the AArch64 descriptors ------------------------------------------------------------

def walk_arm64(mem: Memory, root: int, addr: int) -> tuple[int, bool] | None:
    """(physical address, executable) by a VMSAv8-64 walk from level 1 (4 KiB granule,
    39-bit addresses); None at an invalid descriptor."""
    from pykexec.efi.paging import Arm64IdentityMap as M
    table, xn = root, False
    for level, shift in ((1, 30), (2, 21), (3, 12)):
        entry = mem.u64(table + 8 * (addr >> shift & 511))
        if not entry & 1:
            return None
        xn |= bool(entry & M.XN)
        leaf = level == 3 or not entry & 2
        if leaf:
            assert entry & 3 == (3 if level == 3 else 1)
            assert entry & M.ATTRS == M.ATTRS and not entry & 0xC0   # shareable, AF, EL1 RW
            size = 1 << shift
            return (entry & ADDR & ~(size - 1)) | (addr & (size - 1)), not xn
        table = entry & ADDR
    raise AssertionError("unreachable")


def test_arm64_map_uses_level_1_as_its_root_and_blocks_and_pages_for_ram():
    from pykexec.efi.paging import Arm64IdentityMap
    mem = Memory()
    tables = Arm64IdentityMap(BASE, 2 * GIB, mem.write)
    tables.build()
    assert tables.root == BASE + PAGE                  # TTBR0_EL1: the level 1 table
    for addr in (0, 0x1234, LARGE - 8, 0x7FFF_F123, 2 * GIB - 1):
        assert walk_arm64(mem, tables.root, addr) == (addr, False), hex(addr)
    assert walk_arm64(mem, tables.root, 2 * GIB) is None
    assert tables.allow_exec(LARGE + 0x5123)           # split into 4 KiB pages
    assert walk_arm64(mem, tables.root, LARGE + 0x5000) == (LARGE + 0x5000, True)
    assert walk_arm64(mem, tables.root, LARGE + 0x6000) == (LARGE + 0x6000, False)
    assert tables.map_beyond(4 * GIB) is False        # the engine turns the MMU off instead
