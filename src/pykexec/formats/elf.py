"""ELF images (System V ABI, "ELF Header" and "Program Header"), read with pyelftools.

A loader only needs the program headers: PT_LOAD segments give what goes
where, PT_NOTE segments carry notes such as Xen's.  Multiboot headers found
in the file (Xen's hypervisor is an ELF with both) are reported too.

Not every ELF is a kernel.  Only an executable (``e_type`` ET_EXEC or ET_DYN,
gABI "ELF Header") can be one, and it is taken for a kernel only when it says
so: a "Linux" or "Xen" note (a vmlinux carries Linux's build-salt note since
4.19, and Xen's notes when built for Xen) or a Multiboot header.  An
executable with none of these is firmware or a bare-metal program (OpenSBI's
``fw_jump.elf`` and ``fw_dynamic.elf`` are ET_EXEC riscv ELFs linked at their
physical address 0x80000000, without a single note); it is reported, and a
loader is told what it is instead of being handed it as a kernel.  The
program header table is bounds-checked before pyelftools reads it, so a
header pointing past the end is an error naming e_phoff, not an exception
deep inside the library.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import FormatError, NotLoadable
from ..layout import Field, Layout
from . import multiboot, multiboot2
from .layer import Buffer, Format, Layer, ignoring_limits

if TYPE_CHECKING:  # pyelftools loads when an ELF is parsed, not when one is probed
    from elftools.elf.elffile import ELFFile

ELF_MAGIC = b"\x7fELF"
MAX_NOTES = 4096
ARCHES = {"EM_X86_64": "x86_64", "EM_386": "x86", "EM_AARCH64": "arm64", "EM_ARM": "arm",
          "EM_RISCV": "riscv64", "EM_LOONGARCH": "loongarch64", "EM_PPC64": "ppc64",
          "EM_S390": "s390x"}
NOTE_HEADER = 12  # namesz, descsz, type: three words in ELF32 and ELF64 alike
#: note types by owner: GNU (glibc elf.h NT_GNU_*), Xen (xen/include/public/elfnote.h, as
#: Linux's include/xen/interface/elfnote.h has it), Linux (include/linux/build-salt.h,
#: include/linux/elfnote-lto.h); other owners' types are shown as numbers
NOTE_TYPES: dict[str, dict[int, str]] = {
    "GNU": {1: "NT_GNU_ABI_TAG", 2: "NT_GNU_HWCAP", 3: "NT_GNU_BUILD_ID",
            4: "NT_GNU_GOLD_VERSION", 5: "NT_GNU_PROPERTY_TYPE_0"},
    "Xen": {0: "XEN_ELFNOTE_INFO", 1: "XEN_ELFNOTE_ENTRY", 2: "XEN_ELFNOTE_HYPERCALL_PAGE",
            3: "XEN_ELFNOTE_VIRT_BASE", 4: "XEN_ELFNOTE_PADDR_OFFSET", 5: "XEN_ELFNOTE_XEN_VERSION",
            6: "XEN_ELFNOTE_GUEST_OS", 7: "XEN_ELFNOTE_GUEST_VERSION", 8: "XEN_ELFNOTE_LOADER",
            9: "XEN_ELFNOTE_PAE_MODE", 10: "XEN_ELFNOTE_FEATURES", 11: "XEN_ELFNOTE_BSD_SYMTAB",
            12: "XEN_ELFNOTE_HV_START_LOW", 13: "XEN_ELFNOTE_L1_MFN_VALID",
            14: "XEN_ELFNOTE_SUSPEND_CANCEL", 15: "XEN_ELFNOTE_INIT_P2M",
            16: "XEN_ELFNOTE_MOD_START_PFN", 17: "XEN_ELFNOTE_SUPPORTED_FEATURES",
            18: "XEN_ELFNOTE_PHYS32_ENTRY"},
    "Linux": {0x100: "LINUX_ELFNOTE_BUILD_SALT", 0x101: "LINUX_ELFNOTE_LTO_INFO"},
}
PHDR_SIZE = {1: 32, 2: 56}  # sizeof(Elf32_Phdr), sizeof(Elf64_Phdr)
IDENT = Layout("elf", [Field("ei_class", 4, "B"), Field("ei_data", 5, "B")])
PHDR = {  # (e_phoff, e_phentsize, e_phnum) offsets per class
    1: Layout("elf", [Field("e_phoff", 0x1C, "I"), Field("e_phentsize", 0x2A, "H"),
                      Field("e_phnum", 0x2C, "H")]),
    2: Layout("elf", [Field("e_phoff", 0x20, "Q"), Field("e_phentsize", 0x36, "H"),
                      Field("e_phnum", 0x38, "H")]),
}


@dataclass(frozen=True)
class Segment:
    p_type: str
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_flags: int
    p_align: int


@dataclass(frozen=True)
class Note:
    """One note: its owner (``n_name``), its type as a number, and the type's name in
    the owner's own table (None when the owner or the type is not known)."""

    n_name: str
    n_type: int
    n_descsz: int
    type_name: str | None = None


E_TYPE_OFFSET = 0x10
#: what each e_type is (gABI), for an ELF that is not an executable
NOT_EXECUTABLE = {"ET_NONE": "an ELF file of no type (ET_NONE)",
                  "ET_REL": "an ELF relocatable object (ET_REL)",
                  "ET_CORE": "an ELF core dump (ET_CORE)"}
#: note owners that mark an executable as a kernel
KERNEL_NOTE_OWNERS = ("Linux", "Xen")


@dataclass(frozen=True)
class ElfFile(Layer):
    """The fields every ELF reports, kernel or not."""

    FORMAT = "elf"
    elf_class: int = 64
    endianness: str = "little"
    machine: str = ""
    elf_type: str = ""
    entry: int = 0
    segments: tuple[Segment, ...] = ()
    notes: tuple[Note, ...] = ()
    multiboot: tuple[dict, ...] = ()

    @property
    def loads(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.p_type == "PT_LOAD")

    def segment_bytes(self, seg: Segment) -> memoryview:
        return memoryview(self.data)[seg.p_offset:seg.p_offset + seg.p_filesz]

    def to_json(self) -> dict:
        """As every layer, but ``class`` (32 or 64) under its specification name."""
        out = super().to_json()
        out["class"] = out.pop("elf_class")
        return out


@dataclass(frozen=True)
class Elf(ElfFile):
    """An ELF executable that identifies itself as a kernel (Linux or Xen notes, Multiboot)."""

    KERNEL = True

    def refusal(self) -> NotLoadable | None:
        """A kernel without a Linux note boots by its Multiboot header (Multiboot2 first, as
        GRUB and the loader prefer it): one that requires what pykexec lacks is refused."""
        if any(n.n_name == "Linux" for n in self.notes) or not self.multiboot:
            return None
        return self.multiboot[0]["header"].refusal()


@dataclass(frozen=True)
class ElfNotKernel(ElfFile):
    """An ELF that is not a kernel: ``what`` says what it is instead."""

    what: str = ""

    def refusal(self) -> NotLoadable:
        if self.elf_type in ("ET_EXEC", "ET_DYN"):
            return NotLoadable("elf", self.what, field="notes")
        return NotLoadable("elf", self.what, field="e_type", offset=E_TYPE_OFFSET)


def probe(data: Buffer) -> bool:
    return bytes(data[:4]) == ELF_MAGIC


def parse(data: Buffer) -> ElfFile:
    if not probe(data):
        raise FormatError("elf", "no \\x7fELF magic", field="e_ident", offset=0)
    _check_tables(data)
    from elftools.common.exceptions import ELFError
    from elftools.construct.core import ConstructError
    from elftools.elf.elffile import ELFFile
    try:
        elf = ELFFile(_file(data))
        segments = tuple(_segment(s) for s in elf.iter_segments())
        notes = tuple(_notes(elf, data))
        header = elf.header
    except (ELFError, ConstructError, struct.error, ValueError, KeyError, IndexError,
            TypeError) as e:
        raise FormatError("elf", f"malformed: {e}", field="e_ident") from e
    for s in segments:
        if s.p_type == "PT_LOAD" and s.p_offset + s.p_filesz > len(data):
            raise FormatError("elf", f"PT_LOAD [{s.p_offset:#x}, +{s.p_filesz:#x}) runs past the "
                              f"end of the {len(data):#x}-byte file", field="p_filesz")
    fields = dict(arch=ARCHES.get(header["e_machine"]), data=data, elf_class=elf.elfclass,
                  endianness="little" if elf.little_endian else "big",
                  machine=str(header["e_machine"]), elf_type=str(header["e_type"]),
                  entry=header["e_entry"], segments=segments, notes=notes,
                  multiboot=_multiboot(data))
    what = _not_a_kernel(fields)
    return Elf(**fields) if what is None else ElfNotKernel(**fields, what=what)


def _not_a_kernel(f: dict) -> str | None:
    """What the ELF is when it is not a kernel (None when it is one)."""
    e_type = f["elf_type"]
    if e_type not in ("ET_EXEC", "ET_DYN"):
        kind = NOT_EXECUTABLE.get(e_type, f"an ELF of e_type {e_type}")
        return f"{kind}, not an executable kernel"
    if f["multiboot"] or any(n.n_name in KERNEL_NOTE_OWNERS for n in f["notes"]):
        return None
    loads = [s for s in f["segments"] if s.p_type == "PT_LOAD"]
    where = f" linked at {min(s.p_paddr for s in loads):#x}" if loads else ""
    return (f"an {f['machine']} ELF executable ({e_type}){where} with no Linux or Xen note and "
            "no Multiboot header: firmware or a bare-metal program (as OpenSBI's fw_*.elf), "
            "not a kernel")


def _file(data: Buffer) -> io.BytesIO:
    """A file over ``data`` for pyelftools.  BytesIO shares a whole ``bytes`` object
    instead of copying it, so a view of one (a decompressed vmlinux) is unwrapped."""
    if isinstance(data, memoryview) and isinstance(data.obj, bytes) and data.nbytes == len(data.obj):
        return io.BytesIO(data.obj)
    return io.BytesIO(data)


def _check_tables(data: Buffer) -> None:
    ident = IDENT.unpack(data)
    layout = PHDR.get(ident["ei_class"])
    if layout is None or ident["ei_data"] not in (1, 2):
        raise FormatError("elf", f"EI_CLASS {ident['ei_class']} / EI_DATA {ident['ei_data']} "
                          "is not ELF32/ELF64 little or big endian", field="e_ident", offset=4)
    if ident["ei_data"] == 2:
        layout = Layout("elf", list(layout.fields.values()), endian=">")
    h = layout.unpack(data)
    entsize = PHDR_SIZE[ident["ei_class"]]
    if h["e_phnum"] and h["e_phentsize"] != entsize:
        raise FormatError("elf", f"e_phentsize is {h['e_phentsize']}, but an ELF{32 * ident['ei_class']} "
                          f"program header is {entsize} bytes", field="e_phentsize",
                          offset=layout.offset("e_phentsize"))
    end = h["e_phoff"] + h["e_phentsize"] * h["e_phnum"]
    if end > len(data):
        raise FormatError("elf", f"program headers [{h['e_phoff']:#x}, {end:#x}) run past the "
                          f"end of the {len(data):#x}-byte file", field="e_phoff",
                          offset=layout.offset("e_phoff"))


def _segment(s) -> Segment:
    h = s.header
    return Segment(p_type=str(h["p_type"]), p_offset=h["p_offset"], p_vaddr=h["p_vaddr"],
                   p_paddr=h["p_paddr"], p_filesz=h["p_filesz"], p_memsz=h["p_memsz"],
                   p_flags=h["p_flags"], p_align=h["p_align"])


def _notes(elf: ELFFile, data: Buffer):
    """The notes of every PT_NOTE segment (gABI "Note Section"), read here rather than by
    pyelftools, which names every owner's types from GNU's table (a Xen note of type 3,
    XEN_ELFNOTE_VIRT_BASE, would read NT_GNU_BUILD_ID)."""
    e = "<" if elf.little_endian else ">"
    count = 0
    for seg in elf.iter_segments():
        h = seg.header
        if h["p_type"] != "PT_NOTE":
            continue
        pos, end = h["p_offset"], h["p_offset"] + h["p_filesz"]
        if end > len(data):
            raise FormatError("elf", "PT_NOTE runs past the end of the file", field="p_filesz")
        align = 8 if h["p_align"] == 8 else 4  # as binutils' readelf: 8 for 8-aligned segments
        while pos + NOTE_HEADER <= end:
            namesz, descsz, n_type = struct.unpack_from(e + "3I", data, pos)
            desc_at = pos + _align_up(NOTE_HEADER + namesz, align)
            if desc_at + descsz > end:
                raise FormatError("elf", f"note name and desc ({namesz} + {descsz} bytes) run past "
                                  "the end of their PT_NOTE", field="n_descsz", offset=pos + 4)
            count += 1
            if count > MAX_NOTES:
                raise FormatError("elf", f"more than {MAX_NOTES} notes", field="PT_NOTE")
            raw_name = bytes(data[pos + NOTE_HEADER:pos + NOTE_HEADER + namesz]).split(b"\0", 1)[0]
            name = raw_name.decode("utf-8", "backslashreplace")
            yield Note(n_name=name, n_type=n_type, n_descsz=descsz,
                       type_name=NOTE_TYPES.get(name, {}).get(n_type))
            pos = _align_up(desc_at + descsz, align)


def _align_up(value: int, to: int) -> int:
    return -(-value // to) * to


def _multiboot(data: Buffer) -> tuple[dict, ...]:
    found = []
    for kind, module in (("multiboot2", multiboot2), ("multiboot", multiboot)):
        try:
            header = module.find(data)
        except FormatError:
            header = None
        if header is not None:
            found.append({"format": kind, "header": header})
    return tuple(found)


FORMAT = Format("elf", probe, ignoring_limits(parse), "\\x7fELF at 0")
