"""Guest physical memory as UEFI describes it: a memory map, a page allocator and pools.

UEFI 2.10 section 7.2.  The map is a sorted list of descriptors that covers
guest RAM.  ``AllocatePages`` carves pages out of ``EfiConventionalMemory``:

* ``AllocateAnyPages``: the highest free range below the top of RAM (EDK2
  allocates top down too);
* ``AllocateMaxAddress``: the highest free range that ends at or below
  ``*Memory`` (inclusive, as the specification says);
* ``AllocateAddress``: exactly ``*Memory``, which must be page aligned and
  free, else ``EFI_NOT_FOUND``.

``FreePages`` returns pages that ``AllocatePages`` handed out (whole or in
part) and refuses anything else.  Every change bumps the map key, which
``ExitBootServices`` checks.  Pools are carved out of 64 KiB page chunks of
their own memory type; large pools get pages of their own.

Pure Python: nothing here touches the emulator, so the allocator is unit
tested on its own.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from . import constants as c

POOL_CHUNK_PAGES = 16
POOL_ALIGN = 16
POOL_LARGE = 16 << 10


class EfiStatusError(Exception):
    """Raised inside a service to make it return ``status`` (an EFI error code)."""

    def __init__(self, status: int, why: str = "") -> None:
        self.status = status
        self.why = why
        super().__init__(f"{c.status_name(status)}{': ' + why if why else ''}")


@dataclass
class Descriptor:
    """One EFI_MEMORY_DESCRIPTOR: [start, end) of one type and attribute."""

    start: int
    end: int
    type: int
    attribute: int = c.EFI_MEMORY_WB

    @property
    def pages(self) -> int:
        return (self.end - self.start) // c.PAGE

    def pack(self, desc_size: int = c.DESCRIPTOR_SIZE) -> bytes:
        raw = struct.pack("<IIQQQQ", self.type, 0, self.start, 0, self.pages, self.attribute)
        return raw + bytes(desc_size - len(raw))

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "pages": self.pages,
                "type": c.memory_type_name(self.type), "attribute": self.attribute}


def valid_memory_type(t: int) -> bool:
    """Types a caller may allocate: the spec's, OEM's and OS's, but not Conventional and up."""
    if t in (c.CONVENTIONAL, 14, 15):   # Conventional, Persistent, Unaccepted
        return False
    return 0 <= t < c.MAX_MEMORY_TYPE or c.OEM_TYPES_START <= t <= 0xFFFFFFFF


class MemoryMap:
    """The UEFI memory map over ``ram_size`` bytes of guest RAM, with a page allocator."""

    def __init__(self, ram_size: int, *, holes: tuple[tuple[int, int], ...] = ((0, 0x1000),
                                                                              (0xA0000, 0x100000))):
        if ram_size % c.PAGE or ram_size < (2 << 20):
            raise ValueError(f"guest RAM must be a whole number of pages, at least 2 MiB, "
                             f"not {ram_size:#x}")
        self.ram_size = ram_size
        self.key = 1
        self.descs: list[Descriptor] = [Descriptor(0, ram_size, c.CONVENTIONAL,
                                                   self._attribute_for(c.CONVENTIONAL))]
        self.allocated: dict[int, tuple[int, int]] = {}  # start -> (end, type): AllocatePages ranges
        self.on_allocate = None                           # (base, size) -> None, e.g. map it
        for start, end in holes:
            self._set(start, end, c.RESERVED, c.EFI_MEMORY_UC)

    # -- queries
    def descriptors(self) -> list[Descriptor]:
        return list(self.descs)

    def find(self, addr: int) -> Descriptor | None:
        starts = [d.start for d in self.descs]
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and self.descs[i].start <= addr < self.descs[i].end:
            return self.descs[i]
        return None

    def is_free(self, start: int, end: int) -> bool:
        d = self.find(start)
        return d is not None and d.type == c.CONVENTIONAL and end <= d.end

    def pack(self, desc_size: int = c.DESCRIPTOR_SIZE) -> bytes:
        return b"".join(d.pack(desc_size) for d in self.descs)

    @property
    def map_size(self) -> int:
        return len(self.descs) * c.DESCRIPTOR_SIZE

    # -- the firmware's own fixed ranges
    def reserve(self, start: int, size: int, mem_type: int) -> None:
        """Type ``[start, start + size)`` as ``mem_type`` for the firmware's own use.

        Unlike AllocatePages it is never handed out nor freed (FreePages refuses
        it), and it does not change the map key: it is for building the firmware,
        before any map is handed out.
        """
        end = start + -(-size // c.PAGE) * c.PAGE
        if start % c.PAGE or not self.is_free(start, end):
            raise ValueError(f"[{start:#x}, {end:#x}) is not free page-aligned memory")
        self._set(start, end, mem_type)

    # -- AllocatePages / FreePages
    def allocate_pages(self, how: int, mem_type: int, pages: int, address: int = 0, *,
                       align: int = c.PAGE, avoid_align: int | None = None) -> int:
        """Return the base of ``pages`` pages; raise :class:`EfiStatusError` as the spec says.

        ``align`` and ``avoid_align`` are for the firmware's own image loader:
        the base is a multiple of ``align`` and, if given, not of ``avoid_align``.
        """
        if how not in (c.ALLOCATE_ANY_PAGES, c.ALLOCATE_MAX_ADDRESS, c.ALLOCATE_ADDRESS):
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"allocation type {how}")
        if not valid_memory_type(mem_type):
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"memory type {mem_type:#x}")
        if pages <= 0:
            raise EfiStatusError(c.EFI_INVALID_PARAMETER if pages < 0 else c.EFI_NOT_FOUND,
                                 "zero pages")
        size = pages * c.PAGE
        if how == c.ALLOCATE_ADDRESS:
            if address % c.PAGE:
                raise EfiStatusError(c.EFI_NOT_FOUND, f"address {address:#x} is not page aligned")
            if not self.is_free(address, address + size):
                raise EfiStatusError(c.EFI_NOT_FOUND, f"[{address:#x}, +{size:#x}) is not free")
            base = address
        else:
            limit = self.ram_size if how == c.ALLOCATE_ANY_PAGES else min(address + 1, self.ram_size)
            base = self._highest_fit(size, limit, align, avoid_align)
            if base is None:
                raise EfiStatusError(c.EFI_OUT_OF_RESOURCES if how == c.ALLOCATE_ANY_PAGES
                                     else c.EFI_NOT_FOUND,
                                     f"no {pages} free pages below {limit:#x}")
        self._set(base, base + size, mem_type)
        self.allocated[base] = (base + size, mem_type)
        self.key += 1
        if self.on_allocate is not None:
            self.on_allocate(base, size)
        return base

    def _highest_fit(self, size: int, limit: int, align: int, avoid: int | None) -> int | None:
        for d in reversed(self.descs):
            if d.type != c.CONVENTIONAL or d.start >= limit:
                continue
            top = min(d.end, limit)
            base = (top - size) // align * align
            if avoid and base % avoid == 0:
                base -= align
            if base >= d.start and base >= 0:
                return base
        return None

    def free_pages(self, address: int, pages: int) -> int:
        """Give back pages from one AllocatePages range; return its memory type."""
        end = address + pages * c.PAGE
        if address % c.PAGE or pages <= 0:
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"FreePages({address:#x}, {pages})")
        owner = self._owner(address, end)
        if owner is None:
            raise EfiStatusError(c.EFI_NOT_FOUND, f"[{address:#x}, {end:#x}) was not allocated "
                                 "with AllocatePages")
        ostart, (oend, mem_type) = owner
        del self.allocated[ostart]
        if ostart < address:
            self.allocated[ostart] = (address, mem_type)
        if end < oend:
            self.allocated[end] = (oend, mem_type)
        self._set(address, end, c.CONVENTIONAL)
        self.key += 1
        return mem_type

    def _owner(self, start: int, end: int):
        for ostart, (oend, t) in self.allocated.items():
            if ostart <= start and end <= oend:
                return ostart, (oend, t)
        return None

    def allocation_containing(self, addr: int) -> tuple[int, int, int] | None:
        """(start, end, type) of the AllocatePages range holding ``addr``."""
        for ostart, (oend, t) in self.allocated.items():
            if ostart <= addr < oend:
                return ostart, oend, t
        return None

    # -- descriptor surgery
    def _set(self, start: int, end: int, mem_type: int, attribute: int | None = None) -> None:
        out: list[Descriptor] = []
        for d in self.descs:
            if d.end <= start or d.start >= end:
                out.append(d)
                continue
            if d.start < start:
                out.append(Descriptor(d.start, start, d.type, d.attribute))
            attr = attribute if attribute is not None else self._attribute_for(mem_type)
            out.append(Descriptor(max(d.start, start), min(d.end, end), mem_type, attr))
            if d.end > end:
                out.append(Descriptor(end, d.end, d.type, d.attribute))
        self.descs = self._coalesce(out)

    @staticmethod
    def _attribute_for(mem_type: int) -> int:
        attr = c.EFI_MEMORY_UC | c.EFI_MEMORY_WC | c.EFI_MEMORY_WT | c.EFI_MEMORY_WB
        return attr | c.EFI_MEMORY_RUNTIME if mem_type in (c.RT_CODE, c.RT_DATA) else attr

    @staticmethod
    def _coalesce(descs: list[Descriptor]) -> list[Descriptor]:
        out: list[Descriptor] = []
        for d in sorted(descs, key=lambda x: x.start):
            if out and out[-1].end == d.start and out[-1].type == d.type \
                    and out[-1].attribute == d.attribute and d.type == c.CONVENTIONAL:
                out[-1] = Descriptor(out[-1].start, d.end, d.type, d.attribute)
            else:
                out.append(d)
        return out


class Pools:
    """AllocatePool/FreePool on top of a :class:`MemoryMap`, 16-byte aligned blocks."""

    def __init__(self, memory: MemoryMap) -> None:
        self.memory = memory
        self.blocks: dict[int, tuple[int, int, bool]] = {}   # addr -> (size, type, own pages)
        self.free: dict[int, list[tuple[int, int]]] = {}      # type -> [(addr, size)] sorted

    def allocate(self, mem_type: int, size: int) -> int:
        if not valid_memory_type(mem_type):
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"memory type {mem_type:#x}")
        size = max(POOL_ALIGN, -(-size // POOL_ALIGN) * POOL_ALIGN)
        if size >= POOL_LARGE:
            pages = -(-size // c.PAGE)
            addr = self.memory.allocate_pages(c.ALLOCATE_ANY_PAGES, mem_type, pages)
            self.blocks[addr] = (size, mem_type, True)
            return addr
        free = self.free.setdefault(mem_type, [])
        for i, (addr, avail) in enumerate(free):
            if avail >= size:
                if avail == size:
                    del free[i]
                else:
                    free[i] = (addr + size, avail - size)
                self.blocks[addr] = (size, mem_type, False)
                self.memory.key += 1
                return addr
        chunk = self.memory.allocate_pages(c.ALLOCATE_ANY_PAGES, mem_type, POOL_CHUNK_PAGES)
        free.append((chunk + size, POOL_CHUNK_PAGES * c.PAGE - size))
        free.sort()
        self.blocks[chunk] = (size, mem_type, False)
        return chunk

    def release(self, addr: int) -> None:
        block = self.blocks.pop(addr, None)
        if block is None:
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"{addr:#x} is not a pool allocation")
        size, mem_type, own = block
        if own:
            self.memory.free_pages(addr, -(-size // c.PAGE))
            return
        free = self.free.setdefault(mem_type, [])
        bisect.insort(free, (addr, size))
        merged: list[tuple[int, int]] = []
        for a, s in free:
            if merged and merged[-1][0] + merged[-1][1] == a:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((a, s))
        self.free[mem_type] = merged
        self.memory.key += 1

    def size_of(self, addr: int) -> int | None:
        block = self.blocks.get(addr)
        return None if block is None else block[0]
