"""The ELF core header a kdump capture kernel reads as /proc/vmcore (``elfcorehdr=``).

Format: System V ABI ELF64 (ET_CORE), as fs/proc/vmcore.c parses it
(``parse_crash_elf64_headers``): program headers only, PT_NOTE segments whose
p_offset is the physical address of the notes, PT_LOAD segments whose p_offset
is where the old memory can be read and p_paddr where it was.

Contents, after kexec-tools (kexec/crashdump-elf.c ``crash_create_elf64_headers``,
kexec/arch/i386/crashdump-x86.c ``load_crashdump_segments``), in its order:

1. one PT_NOTE per CPU: ``/sys/devices/system/cpu/cpuN/crash_notes`` (the
   physical address, ``%llx``) and ``crash_notes_size`` (``%zu``);
2. one PT_NOTE for ``/sys/kernel/vmcoreinfo`` (``"%lx %x"``: address, size);
3. one PT_LOAD for the kernel text mapping (from /proc/kcore's program headers
   and the "Kernel code" resource), when known;
4. one PT_LOAD per range of "System RAM" (driver-managed included), "ACPI
   Tables" and "ACPI Non-volatile Storage", minus the crash regions and any
   GART aperture; p_vaddr is the direct-map address (PAGE_OFFSET + paddr); the
   range that was backed up (the first 640 KiB) points its p_offset at the
   backup copy, which the purgatory fills before the capture kernel runs.

There is no fixed cap: more than 65534 headers use the ELF extended numbering
(``e_phnum = PN_XNUM``, the count in section header 0's ``sh_info``, as
fs/binfmt_elf.c writes core files).  Note fs/proc/vmcore.c reads ``e_phnum``
as it is, so a capture kernel reads at most 65534 of them.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..machine.model import Machine
from ..machine.ranges import PAGE_SIZE, Range, align_down, align_up, subtract

log = logging.getLogger(__name__)

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
ET_CORE = 4
EM_X86_64 = 62
EM_AARCH64 = 183
#: e_machine of the core header, by the architecture the capture kernel runs on
ELF_MACHINES = {"x86_64": EM_X86_64, "arm64": EM_AARCH64}
EV_CURRENT = 1
PT_LOAD = 1
PT_NOTE = 4
PF_X, PF_W, PF_R = 1, 2, 4
PN_XNUM = 0xFFFF
ELF_IDENT = b"\x7fELF" + bytes([2, 1, EV_CURRENT, 0]) + bytes(8)  # ELFCLASS64, ELFDATA2LSB, SYSV

X86_64_START_KERNEL_MAP = 0xFFFFFFFF80000000
X86_64_KERNEL_TEXT_SIZE = 1 << 30
X86_64_KERN_VADDR_ALIGN = 0x100000
X86_64_PAGE_OFFSET = 0xFFFF888000000000          # 4-level paging, no KASLR (Documentation/arch/x86/x86_64/mm.rst)
DIRECT_MAP_START = 0xFFFF800000000000
DEFAULT_NOTE_SIZE = 1024                          # kexec-tools MAX_NOTE_BYTES without crash_notes_size
CRASH_DUMP_TYPES = ("ACPI Tables", "ACPI Non-volatile Storage")
KEXEC_TOOLS_MIN_MEMSZ = 16 * 1024                 # crashdump-x86.c: "bloat the memsz of elf core header
                                                  # segment to 16K" (a gap some vmlinux layouts overwrite)


def phnum(cpus: int, nr_ranges: int) -> int:
    """Program headers for ``cpus`` CPU notes and ``nr_ranges`` memory ranges: a PT_NOTE per CPU,
    one for vmcoreinfo, one PT_LOAD for the kernel text and one per range.  The kernel's
    ``crash_prepare_elf64_headers`` counts the same (nr_cpus + 1 + nr_ranges + 1)."""
    return cpus + 1 + 1 + nr_ranges


def header_size(count: int) -> int:
    """Bytes of an ELF64 core header with ``count`` program headers, as :func:`build` writes it
    (the extended-numbering section header only past 65534)."""
    return EHDR.size + count * PHDR.size + (SHDR.size if count >= PN_XNUM else 0)


def user_memsz(bufsz: int, page_size: int) -> int:
    """The elfcorehdr segment's memsz in a kexec_load: at least 16 KiB (kexec-tools
    ``load_crashdump_segments``), rounded up to a page (``add_buffer``)."""
    return align_up(max(bufsz, KEXEC_TOOLS_MIN_MEMSZ), page_size)


@dataclass(frozen=True)
class Note:
    """A PT_NOTE source: where the kernel keeps it and how big it is."""

    paddr: int
    size: int
    name: str = ""


@dataclass(frozen=True)
class KernelText:
    """The kernel text mapping (kexec-tools ``kern_vaddr_start``, ``kern_paddr_start``, ``kern_size``)."""

    vaddr: int
    paddr: int
    size: int


@dataclass(frozen=True)
class CrashSources:
    """What the running kernel says about itself for the capture kernel."""

    cpu_notes: tuple[Note, ...] = ()
    vmcoreinfo: Note | None = None
    kernel_text: KernelText | None = None
    page_offset: int | None = None
    unreadable: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Backup:
    """The first 640 KiB copied by the purgatory from ``source`` to ``dest`` before the jump."""

    source: Range
    dest: int


def crash_ranges(machine: Machine) -> list[Range]:
    """The memory the dump describes: RAM, ACPI tables and NVS, minus crash regions and GART."""
    keep = [r.range for r in machine.system_ram()]
    keep += [r.range for r in machine.memory if r.type in CRASH_DUMP_TYPES]
    holes = list(machine.crash_regions()) + [r.range for r in machine.memory if r.type == "GART"]
    return subtract(keep, holes)


def build(ranges: Sequence[Range], *, sources: CrashSources, backup: Backup | None = None,
          machine: int = EM_X86_64) -> bytes:
    """The ELF64 core header for ``ranges`` (sorted, disjoint) and the notes in ``sources``."""
    page_offset = sources.page_offset if sources.page_offset is not None else X86_64_PAGE_OFFSET
    pack = PHDR.pack
    phdrs = [pack(PT_NOTE, 0, n.paddr, 0, n.paddr, n.size, n.size, 0) for n in sources.cpu_notes]
    if sources.vmcoreinfo is not None:
        v = sources.vmcoreinfo
        phdrs.append(pack(PT_NOTE, 0, v.paddr, 0, v.paddr, v.size, v.size, 0))
    rwx = PF_R | PF_W | PF_X
    if sources.kernel_text is not None:
        t = sources.kernel_text
        phdrs.append(pack(PT_LOAD, rwx, t.paddr, t.vaddr, t.paddr, t.size, t.size, 0))
    for r in _split_backup(ranges, backup):
        offset = r.start if backup is None or r not in backup.source else backup.dest + r.start - backup.source.start
        phdrs.append(pack(PT_LOAD, rwx, offset, page_offset + r.start, r.start, r.size, r.size, 0))
    count = len(phdrs)
    phoff = EHDR.size
    if count < PN_XNUM:
        head = EHDR.pack(ELF_IDENT, ET_CORE, machine, EV_CURRENT, 0, phoff, 0, 0, EHDR.size, PHDR.size,
                         count, 0, 0, 0)
        return b"".join([head, *phdrs])
    shoff = phoff + count * PHDR.size
    head = EHDR.pack(ELF_IDENT, ET_CORE, machine, EV_CURRENT, 0, phoff, shoff, 0, EHDR.size, PHDR.size,
                     PN_XNUM, SHDR.size, 1, 0)
    extnum = SHDR.pack(0, 0, 0, 0, 0, 1, 0, count, 0, 0)   # SHT_NULL; sh_size = e_shnum, sh_info = e_phnum
    return b"".join([head, *phdrs, extnum])


def _split_backup(ranges: Iterable[Range], backup: Backup | None) -> Iterable[Range]:
    """The ranges, cut at the backup source's edges so the backed-up part is a range of its own."""
    if backup is None:
        yield from ranges
        return
    src = backup.source
    for r in ranges:
        if not r.overlaps(src):
            yield r
            continue
        if r.start < src.start:
            yield Range.span(r.start, src.start)
        yield r.intersect(src)
        if src.end < r.end:
            yield Range.span(src.end, r.end)


def parse(data: bytes) -> tuple[dict, list[dict]]:
    """The header and program headers of an ELF64 core header (for tests and inspection)."""
    fields = EHDR.unpack_from(data, 0)
    names = ("e_ident", "e_type", "e_machine", "e_version", "e_entry", "e_phoff", "e_shoff", "e_flags",
             "e_ehsize", "e_phentsize", "e_phnum", "e_shentsize", "e_shnum", "e_shstrndx")
    ehdr = dict(zip(names, fields))
    count = ehdr["e_phnum"]
    if count == PN_XNUM:
        count = SHDR.unpack_from(data, ehdr["e_shoff"])[7]
    pnames = ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align")
    phdrs = [dict(zip(pnames, PHDR.unpack_from(data, ehdr["e_phoff"] + i * PHDR.size))) for i in range(count)]
    return ehdr, phdrs


# -- what the running kernel publishes ---------------------------------------------------------

def read_sources(*, sys: str | Path = "/sys", proc: str | Path = "/proc",
                 machine: Machine | None = None, arch: str = "x86_64") -> CrashSources:
    """CPU notes, vmcoreinfo, kernel text and PAGE_OFFSET of the running kernel (needs root)."""
    sys, proc = Path(sys), Path(proc)
    unreadable: list[tuple[str, str]] = []
    notes = []
    cpus = sys / "devices/system/cpu"
    names = sorted((p for p in cpus.glob("cpu[0-9]*") if p.name[3:].isdigit()), key=lambda p: int(p.name[3:])) \
        if cpus.is_dir() else []
    for cpu in names:
        addr = _read(cpu / "crash_notes", unreadable)
        if addr is None:
            continue
        size_text = _read(cpu / "crash_notes_size", unreadable, quiet=True)
        try:
            paddr = int(addr.split()[0], 16)
            size = int(size_text.split()[0]) if size_text else DEFAULT_NOTE_SIZE
        except (ValueError, IndexError):
            unreadable.append((str(cpu / "crash_notes"), f"unparsable: {addr.strip()!r}"))
            continue
        notes.append(Note(paddr, size, cpu.name))
    vmcoreinfo = None
    text = _read(sys / "kernel/vmcoreinfo", unreadable)
    if text is not None:
        try:
            addr, size = text.split()[:2]
            vmcoreinfo = Note(int(addr, 16), int(size, 16), "vmcoreinfo")
        except ValueError:
            unreadable.append((str(sys / "kernel/vmcoreinfo"), f"unparsable: {text.strip()!r}"))
    kernel_text, page_offset = read_kcore(proc / "kcore", unreadable, machine, arch=arch)
    return CrashSources(cpu_notes=tuple(notes), vmcoreinfo=vmcoreinfo, kernel_text=kernel_text,
                        page_offset=page_offset, unreadable=tuple(unreadable))


def _read(path: Path, unreadable: list, *, quiet: bool = False) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        if not quiet:
            unreadable.append((str(path), "absent"))
    except OSError as e:
        unreadable.append((str(path), e.strerror or str(e)))
    return None


def read_kcore(path: Path, unreadable: list, machine: Machine | None = None,
               limit: int = 1 << 20, arch: str = "x86_64") -> tuple[KernelText | None, int | None]:
    """(kernel text, PAGE_OFFSET) from /proc/kcore's program headers (kexec-tools
    ``get_kernel_vaddr_and_size``; fs/proc/kcore.c fills p_paddr for RAM and text).

    x86_64 by its fixed kernel map; elsewhere (arm64, whose linear map moves
    with VA_BITS and KASLR) by :func:`_linear_kcore`.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(EHDR.size)
            if len(head) < EHDR.size or head[:4] != b"\x7fELF" or head[4] != 2:
                unreadable.append((str(path), "not an ELF64 core"))
                return None, None
            ehdr = EHDR.unpack(head)
            phoff, phnum = ehdr[5], ehdr[10]
            f.seek(phoff)
            table = f.read(min(phnum * PHDR.size, limit))
    except OSError as e:
        unreadable.append((str(path), e.strerror or str(e)))
        return None, None
    if arch != "x86_64":
        return _linear_kcore(table, unreadable, machine, path)
    text = page_offset = None
    for i in range(len(table) // PHDR.size):
        p_type, _, _, vaddr, paddr, _, memsz, _ = PHDR.unpack_from(table, i * PHDR.size)
        if p_type != PT_LOAD:
            continue
        if X86_64_START_KERNEL_MAP <= vaddr and vaddr + memsz <= X86_64_START_KERNEL_MAP + X86_64_KERNEL_TEXT_SIZE:
            if text is None:
                start = align_down(vaddr, X86_64_KERN_VADDR_ALIGN)
                code = _kernel_code(machine)           # kexec-tools: the "Kernel code" resource
                if code is None and paddr not in (0, (1 << 64) - 1):
                    code = paddr                       # fs/proc/kcore.c: __pa_symbol(_text)
                phys = None if code is None else code - (vaddr - start)
                if phys is not None:
                    text = KernelText(start, phys, align_up(vaddr + memsz - start, PAGE_SIZE))
        elif DIRECT_MAP_START <= vaddr < X86_64_START_KERNEL_MAP and paddr not in (0, (1 << 64) - 1) \
                and page_offset is None:
            page_offset = vaddr - paddr
    if text is None:
        unreadable.append((str(path), "no kernel text mapping found"))
    return text, page_offset


def _linear_kcore(table: bytes, unreadable: list, machine: Machine | None,
                  path: Path) -> tuple[KernelText | None, int | None]:
    """fs/proc/kcore.c gives a physical address to RAM entries (``__va(paddr)``, the linear map)
    and to the kernel text (``__pa_symbol(_text)``) only.  The linear map's offset (vaddr -
    paddr) is the largest entry's; the text is the smallest entry off that map holding the
    "Kernel code" resource.  (Counting offsets cannot tell them apart with one RAM range.)"""
    loads = []
    for i in range(len(table) // PHDR.size):
        p_type, _, _, vaddr, paddr, _, memsz, _ = PHDR.unpack_from(table, i * PHDR.size)
        if p_type == PT_LOAD and paddr not in (0, (1 << 64) - 1):
            loads.append((vaddr, paddr, memsz))
    if not loads:
        unreadable.append((str(path), "no RAM mapping with a physical address found"))
        return None, None
    largest = max(loads, key=lambda e: e[2])
    linear = (largest[0] - largest[1]) % (1 << 64)
    code = _kernel_code(machine)
    off_map = sorted((m, v, p) for v, p, m in loads
                     if (v - p) % (1 << 64) != linear and code is not None and p <= code < p + m)
    if not off_map:
        unreadable.append((str(path), "no kernel text mapping found"))
        return None, linear
    m, v, p = off_map[0]
    return KernelText(v, p, align_up(m, PAGE_SIZE)), linear


def _kernel_code(machine: Machine | None) -> int | None:
    if machine is None:
        return None
    return next((r.start for r in machine.memory if r.type == "Kernel code"), None)


def synthetic_sources(cpus: int, *, base: int = 0x7FF00000, note_size: int = 0x2D0) -> CrashSources:
    """Notes for ``cpus`` CPUs at made-up addresses, for tests and the benchmark."""
    notes = tuple(Note(base + i * 0x1000, note_size, f"cpu{i}") for i in range(cpus))
    return CrashSources(cpu_notes=notes, vmcoreinfo=Note(base - 0x1000, 0x1000, "vmcoreinfo"),
                        page_offset=X86_64_PAGE_OFFSET)


__all__ = ["Note", "KernelText", "CrashSources", "Backup", "crash_ranges", "build", "parse", "read_sources",
           "read_kcore", "synthetic_sources"]
