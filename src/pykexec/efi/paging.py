"""Identity-mapped page tables for the emulated firmware, executable only where code runs.

x86-64 here; the same layout in AArch64 descriptors is :class:`Arm64IdentityMap`.

UEFI 2.10 section 2.3.4 (x64 platforms): the image is started in long mode with
"paging mode enabled and any memory space defined by the UEFI memory map identity
mapped (virtual address equals physical address)".  Intel SDM vol. 3A, 4.5:
4-level paging; a page-directory entry with PS set maps 2 MiB; with
IA32_EFER.NXE set, the XD bit (63) forbids instruction fetches from the pages an
entry maps.

Why the emulator pages at all: unicorn (QEMU 5's softmmu) sends every store to a
page whose TLB entry is executable down its slow ``notdirty_write`` path (the
self-modifying-code check), and with paging off every page is executable.  With
these tables a page is executable only once code has been fetched from it (the
fetch faults, and :class:`~pykexec.efi.machine.Engine` calls :meth:`allow_exec`),
so the stores of a decompressor to its output and heap stay on QEMU's fast path.

The tables live in one range the firmware reserves (:data:`RESERVED_AT` in the
engine), laid out as:

* page 0: the PML4, entry 0 -> the PDPT;
* page 1: the PDPT, one entry per GiB of RAM -> its page directory;
* pages 2..: the page directories: 2 MiB entries, present, writable, XD, identity;
* then the same three levels once more, with every page executable: the tables
  CR3 points at only while the engine asks unicorn to translate code that ran
  before (to count its instructions).  unicorn translates through the page
  tables, and a fault there, outside emulation, crashes the process;
* then a pool of page tables: a 2 MiB entry that gets an executable page is split
  into 512 4 KiB entries taken from the pool.  When the pool runs dry the whole
  2 MiB becomes executable (correct, only slower), and :meth:`allow_exec` says so.

Addresses beyond RAM are not mapped; :meth:`map_beyond` maps one on demand, so
that an access there reaches unicorn's unmapped-memory check and fails as it
did with paging off.  Every entry is written with Accessed (and leaves with
Dirty) set, so the page walk never writes an entry back.

Pure Python: entries go through a ``write(addr, bytes)`` callback, so the tables
are unit tested without unicorn.
"""

from __future__ import annotations

import struct
from typing import Callable

PAGE = 1 << 12
LARGE = 1 << 21
GIB = 1 << 30
ENTRIES = 512

PRESENT, WRITABLE, ACCESSED, DIRTY, LARGE_PAGE = 0x1, 0x2, 0x20, 0x40, 0x80
XD = 1 << 63
TABLE = PRESENT | WRITABLE | ACCESSED                  # an entry that points at a table
LEAF = PRESENT | WRITABLE | ACCESSED | DIRTY           # an entry that maps memory

POOL_PAGES = 64
WILD_RESERVE = 2        # pool pages kept for map_beyond: a PDPT and a page directory
CANONICAL = 1 << 47     # 4-level paging: the lower half of the address space


class IdentityMap:
    """The page tables at ``base`` for ``ram_size`` bytes of RAM (see the module docstring)."""

    def __init__(self, base: int, ram_size: int, write: Callable[[int, bytes], None], *,
                 phys_bits: int = 40, pool: int = POOL_PAGES) -> None:
        if base % PAGE or not self.fits(ram_size):
            raise ValueError(f"no identity map at {base:#x} for {ram_size:#x} bytes of RAM: "
                             f"it must be page aligned, and RAM at most {ENTRIES} GiB")
        self.base = base
        self.ram_size = ram_size
        self.phys_bits = phys_bits
        self._write = write
        self.gib = -(-ram_size // GIB)
        self.pml4 = base
        self.pdpt = base + PAGE
        self.pds = base + 2 * PAGE
        self.translate_root = base + (2 + self.gib) * PAGE
        self._pool = base + 2 * (2 + self.gib) * PAGE
        self._pool_end = self._pool + pool * PAGE
        self.tables: dict[int, int] = {}        # 2 MiB region -> its page table
        self.exec_pages: set[int] = set()        # executable 4 KiB pages (addresses)
        self.exec_regions: set[int] = set()      # 2 MiB regions executable whole (no table left)
        self._beyond: dict[tuple[int, ...], int] = {}   # (pml4 index[, pdpt index]) -> table

    @staticmethod
    def fits(ram_size: int) -> bool:
        """Whether one PDPT (512 GiB) maps ``ram_size`` bytes."""
        return 0 < ram_size <= ENTRIES * GIB

    @staticmethod
    def size(ram_size: int, pool: int = POOL_PAGES) -> int:
        """Bytes to reserve for the tables of ``ram_size`` bytes of RAM."""
        return (2 * (2 + -(-ram_size // GIB)) + pool) * PAGE

    @property
    def root(self) -> int:
        """CR3: the PML4."""
        return self.pml4

    @property
    def spare(self) -> int:
        """Page tables left in the pool."""
        return (self._pool_end - self._pool) // PAGE

    # -- building ----------------------------------------------------------------------
    def build(self) -> None:
        """Write the PML4, the PDPT and the page directories: all RAM present, none executable.

        And the same once more at :attr:`translate_root`, all executable.
        """
        for pml4, executable in ((self.pml4, False), (self.translate_root, True)):
            pdpt, pds = pml4 + PAGE, pml4 + 2 * PAGE
            self._write(pml4, struct.pack("<Q", self._table(pdpt)).ljust(PAGE, b"\0"))
            self._write(pdpt, b"".join(
                struct.pack("<Q", self._table(pds + g * PAGE) if g < self.gib
                            else self._beyond_ram(g)) for g in range(ENTRIES)))
            for g in range(self.gib):
                first = g * (GIB // LARGE)
                self._write(pds + g * PAGE, b"".join(
                    struct.pack("<Q", self._large(first + i, executable)) for i in range(ENTRIES)))

    @staticmethod
    def _table(addr: int) -> int:
        """An entry that points at the table at ``addr``."""
        return addr | TABLE

    @staticmethod
    def _beyond_ram(gib: int) -> int:
        """The PDPT entry of a GiB beyond RAM: not present (see map_beyond)."""
        return 0

    @staticmethod
    def _large(region: int, executable: bool = False) -> int:
        return region * LARGE | LEAF | LARGE_PAGE | (0 if executable else XD)

    @staticmethod
    def _small(page: int, executable: bool) -> int:
        return page | LEAF | (0 if executable else XD)

    def _entry(self, addr: int, value: int) -> None:
        self._write(addr, struct.pack("<Q", value))

    def _pde(self, region: int) -> int:
        """Address of the page-directory entry that maps 2 MiB region ``region``."""
        return self.pds + 8 * region

    def _take(self, keep: int = 0) -> int | None:
        """A zeroed page from the pool, leaving ``keep`` pages in it; None if there is none."""
        if self.spare <= keep:
            return None
        table, self._pool = self._pool, self._pool + PAGE
        self._write(table, bytes(PAGE))
        return table

    # -- queries -----------------------------------------------------------------------
    def covers(self, addr: int) -> bool:
        """Whether ``addr`` lies in the RAM the page directories map."""
        return 0 <= addr < self.gib * GIB

    def executable(self, addr: int) -> bool:
        page = addr & ~(PAGE - 1)
        return page in self.exec_pages or addr // LARGE in self.exec_regions

    # -- changes -----------------------------------------------------------------------
    def _split(self, region: int, executable: Callable[[int], bool]) -> bool:
        """Give 2 MiB ``region`` a page table, with ``executable(page)`` pages executable."""
        table = self.tables.get(region)
        if table is None:
            table = self._take(keep=WILD_RESERVE)
            if table is None:
                return False
            self.tables[region] = table
        start = region * LARGE
        entries = []
        for i in range(ENTRIES):
            page = start + i * PAGE
            x = executable(page)
            entries.append(struct.pack("<Q", self._small(page, x)))
            if x:
                self.exec_pages.add(page)
            else:
                self.exec_pages.discard(page)
        self._write(table, b"".join(entries))
        self._entry(self._pde(region), self._table(table))
        self.exec_regions.discard(region)
        return True

    def allow_exec(self, addr: int) -> bool:
        """Make the 4 KiB page holding ``addr`` executable.

        False when no page table was left for its 2 MiB region, which is then
        executable whole.  Loosening a permission needs no TLB flush: QEMU caches
        no fetch permission it did not grant, and walks the tables again.
        """
        if not self.covers(addr):
            raise ValueError(f"{addr:#x} is outside the identity map")
        page, region = addr & ~(PAGE - 1), addr // LARGE
        if page in self.exec_pages or region in self.exec_regions:
            return region not in self.exec_regions
        table = self.tables.get(region)
        if table is not None:
            self._entry(table + 8 * ((page - region * LARGE) // PAGE), self._small(page, True))
            self.exec_pages.add(page)
            return True
        if self._split(region, lambda p: p == page):
            return True
        self._entry(self._pde(region), self._large(region, executable=True))
        self.exec_regions.add(region)
        return False

    def deny_exec(self, keep: Callable[[int], bool]) -> bool:
        """Make every executable page for which ``keep(page)`` is false non-executable again.

        Returns False when a 2 MiB region that is executable whole holds pages
        to deny and no page table is left to split it: it stays executable.  The
        caller flushes the TLB and the translation cache (tightening a permission
        needs both).
        """
        exact = True
        for page in sorted(self.exec_pages):
            if not keep(page):
                region = page // LARGE
                self._entry(self.tables[region] + 8 * ((page - region * LARGE) // PAGE),
                            self._small(page, False))
                self.exec_pages.discard(page)
        for region in sorted(self.exec_regions):
            pages = [region * LARGE + i * PAGE for i in range(ENTRIES)]
            kept = [p for p in pages if keep(p)]
            if len(kept) == ENTRIES:
                continue
            if not kept:
                self._entry(self._pde(region), self._large(region))
                self.exec_regions.discard(region)
            elif not self._split(region, keep):
                exact = False
        return exact

    def map_beyond(self, addr: int) -> bool:
        """Map the 2 MiB around ``addr``, outside the RAM, present (and executable).

        Any access there, a fetch too, then reaches unicorn's physical memory
        (where nothing is) and fails as an unmapped access, as it would with
        paging off.  False when
        ``addr`` cannot be mapped: above the physical address width (the entry's
        address bits would be reserved), or no page table left.
        """
        if self.covers(addr) or not 0 <= addr < min(CANONICAL, 1 << self.phys_bits):
            return False
        i4, i3, i2 = addr >> 39 & 511, addr >> 30 & 511, addr >> 21 & 511
        if i4 == 0:
            pdpt = self.pdpt
        else:
            pdpt = self._table_at(self.pml4 + 8 * i4, (i4,))
        pd = None if pdpt is None else self._table_at(pdpt + 8 * i3, (i4, i3))
        if pd is None:
            return False
        self._entry(pd + 8 * i2, self._large(addr // LARGE, executable=True))
        return True

    def _table_at(self, entry: int, key: tuple[int, ...]) -> int | None:
        table = self._beyond.get(key)
        if table is None:
            table = self._take()
            if table is None:
                return None
            self._beyond[key] = table
            self._entry(entry, self._table(table))
        return table


class Arm64IdentityMap(IdentityMap):
    """The same map in AArch64 descriptors (Arm ARM D8, VMSAv8-64, 4 KiB granule).

    UEFI 2.10 section 2.3.6 (AArch64 platforms): the MMU is on, with memory
    identity mapped.  With ``TCR_EL1.T0SZ`` 25 (a 512 GiB address space) the walk
    starts at level 1, one entry a GiB, so the PDPT's place is the level 1 table
    (``TTBR0_EL1``) and the PML4's page goes unused.  Level 2 blocks map 2 MiB,
    level 3 pages 4 KiB; UXN and PXN make them execute-never.  Memory attribute
    index 0 is ``MAIR_EL1``'s normal write-back memory, inner shareable, Access
    Flag set, EL1 read/write.

    Nothing beyond RAM is mapped, and :meth:`map_beyond` maps nothing: unicorn
    reports a data access the tables do not map (or map with a 1 GiB block) as
    an unmapped access at address 0, and a hooked abort carries no address (no
    FAR_EL1).  The engine turns the MMU off instead, and the access fails again,
    named exactly, as it did with the MMU off.
    """

    TABLE_OR_PAGE, BLOCK = 0b11, 0b01
    ATTRS = (3 << 8) | (1 << 10)
    XN = (1 << 54) | (1 << 53)

    @property
    def root(self) -> int:
        """TTBR0_EL1: the level 1 table."""
        return self.pdpt

    @classmethod
    def _table(cls, addr: int) -> int:
        return addr | cls.TABLE_OR_PAGE

    @classmethod
    def _large(cls, region: int, executable: bool = False) -> int:
        return region * LARGE | cls.ATTRS | cls.BLOCK | (0 if executable else cls.XN)

    @classmethod
    def _small(cls, page: int, executable: bool) -> int:
        return page | cls.ATTRS | cls.TABLE_OR_PAGE | (0 if executable else cls.XN)

    def map_beyond(self, addr: int) -> bool:
        return False
