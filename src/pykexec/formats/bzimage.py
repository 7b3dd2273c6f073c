"""x86 bzImage: the Linux/x86 boot protocol, versions 2.00 to 2.15.

Specification: Documentation/arch/x86/boot.rst ("The real-mode kernel header").
The setup header starts at 0x1f1 and ends at 0x202 + the byte at 0x201 (the
jump's displacement).  Fields are read only when the protocol version that
introduced them is present; older images get the defaults boot.rst gives.
The protected-mode kernel starts at (setup_sects + 1) * 512, where
setup_sects 0 means 4; its compressed payload (2.08+) ends with the
little-endian u32 size of the decompressed vmlinux.

An image shorter than its header declares (the payload, or syssize's
protected-mode code: 16-byte units, so up to 15 bytes short when a builder
such as iPXE does not pad the file) is truncated: ``truncated`` says how,
the report shows it, and a loader is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import FormatError
from ..layout import Field, Layout
from . import pe
from .layer import Buffer, Format, Layer, ignoring_limits

HDRS_MAGIC = 0x53726448  # "HdrS"
BOOT_FLAG = 0xAA55

# (field, offset, struct code, protocol version that introduced it), after boot.rst.
SETUP_HEADER = Layout("bzimage", [
    Field("setup_sects", 0x1F1, "B"),
    Field("root_flags", 0x1F2, "H"),
    Field("syssize", 0x1F4, "I"),
    Field("ram_size", 0x1F8, "H"),
    Field("vid_mode", 0x1FA, "H"),
    Field("root_dev", 0x1FC, "H"),
    Field("boot_flag", 0x1FE, "H"),
    Field("jump", 0x200, "H"),
    Field("header", 0x202, "I"),
    Field("version", 0x206, "H"),
    Field("realmode_swtch", 0x208, "I"),
    Field("start_sys_seg", 0x20C, "H"),
    Field("kernel_version", 0x20E, "H"),
    Field("type_of_loader", 0x210, "B"),
    Field("loadflags", 0x211, "B"),
    Field("setup_move_size", 0x212, "H"),
    Field("code32_start", 0x214, "I"),
    Field("ramdisk_image", 0x218, "I"),
    Field("ramdisk_size", 0x21C, "I"),
    Field("bootsect_kludge", 0x220, "I"),
    Field("heap_end_ptr", 0x224, "H"),
    Field("ext_loader_ver", 0x226, "B"),
    Field("ext_loader_type", 0x227, "B"),
    Field("cmd_line_ptr", 0x228, "I"),
    Field("initrd_addr_max", 0x22C, "I"),
    Field("kernel_alignment", 0x230, "I"),
    Field("relocatable_kernel", 0x234, "B"),
    Field("min_alignment", 0x235, "B"),
    Field("xloadflags", 0x236, "H"),
    Field("cmdline_size", 0x238, "I"),
    Field("hardware_subarch", 0x23C, "I"),
    Field("hardware_subarch_data", 0x240, "Q"),
    Field("payload_offset", 0x248, "I"),
    Field("payload_length", 0x24C, "I"),
    Field("setup_data", 0x250, "Q"),
    Field("pref_address", 0x258, "Q"),
    Field("init_size", 0x260, "I"),
    Field("handover_offset", 0x264, "I"),
    Field("kernel_info_offset", 0x268, "I"),
])
SINCE = {
    "heap_end_ptr": 0x201, "ext_loader_ver": 0x202, "ext_loader_type": 0x202,
    "cmd_line_ptr": 0x202, "initrd_addr_max": 0x203, "kernel_alignment": 0x205,
    "relocatable_kernel": 0x205, "min_alignment": 0x20A, "xloadflags": 0x20C,
    "cmdline_size": 0x206, "hardware_subarch": 0x207, "hardware_subarch_data": 0x207,
    "payload_offset": 0x208, "payload_length": 0x208, "setup_data": 0x209,
    "pref_address": 0x20A, "init_size": 0x20A, "handover_offset": 0x20B,
    "kernel_info_offset": 0x20F,
}
# What boot.rst says a loader must assume when an older protocol lacks the field.
DEFAULTS = {"cmdline_size": 255, "initrd_addr_max": 0x37FFFFFF, "pref_address": 0x100000,
            "kernel_alignment": 0x100000}

# loadflags bits (boot.rst, "loadflags").
LOADED_HIGH = 0x01        # the protected-mode code is loaded at 0x100000
KASLR_FLAG = 0x02         # set by the kernel's decompressor, not a loader
QUIET_FLAG = 0x20
KEEP_SEGMENTS = 0x40      # obsolete
CAN_USE_HEAP = 0x80       # heap_end_ptr is valid
LOADFLAGS = {LOADED_HIGH: "LOADED_HIGH", KASLR_FLAG: "KASLR_FLAG", QUIET_FLAG: "QUIET_FLAG",
             KEEP_SEGMENTS: "KEEP_SEGMENTS", CAN_USE_HEAP: "CAN_USE_HEAP"}
# xloadflags bits (boot.rst, "xloadflags", protocol 2.12+).
XLF_KERNEL_64 = 0x01                 # a 64-bit entry point at the kernel + 0x200
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
XLF_EFI_HANDOVER_32 = 0x04
XLF_EFI_HANDOVER_64 = 0x08
XLF_EFI_KEXEC = 0x10                 # the kernel takes the EFI state a kexec loader passes
XLF_5LEVEL = 0x20                    # can run with 5-level paging
XLF_5LEVEL_ENABLED = 0x40
XLF_MEM_ENCRYPTION = 0x80
XLOADFLAGS = {XLF_KERNEL_64: "XLF_KERNEL_64", XLF_CAN_BE_LOADED_ABOVE_4G: "XLF_CAN_BE_LOADED_ABOVE_4G",
              XLF_EFI_HANDOVER_32: "XLF_EFI_HANDOVER_32", XLF_EFI_HANDOVER_64: "XLF_EFI_HANDOVER_64",
              XLF_EFI_KEXEC: "XLF_EFI_KEXEC", XLF_5LEVEL: "XLF_5LEVEL",
              XLF_5LEVEL_ENABLED: "XLF_5LEVEL_ENABLED", XLF_MEM_ENCRYPTION: "XLF_MEM_ENCRYPTION"}
SETUP_HEADER_OFFSET = SETUP_HEADER.offset("setup_sects")    # 0x1f1: where the header starts
SECTOR_SIZE = 512
STARTUP_64_OFFSET = 0x200   # boot.rst "64-bit Boot Protocol": the kernel's 64-bit entry, from its start
GZIP_MAGIC = b"\x1f\x8b\x08"
#: boot.rst "kernel_version": a pointer, less 0x200, to a NUL-terminated string within the setup code
VERSION_STRING_MAX = 256
#: Linux's: init/version.c's linux_banner body, "UTS_RELEASE (LINUX_COMPILE_BY@LINUX_COMPILE_HOST) UTS_VERSION"
LINUX_VERSION = re.compile(r"\d+\.\d+\S* \(\S+@\S+\) #")


@dataclass(frozen=True)
class Program:
    """A program other than Linux packaged as a bzImage, known by how its kernel_version string
    starts.  ``real_mode`` is why only its real-mode setup code can start it ("": it also takes
    Linux's 32-bit entry, as a kexec loader enters a bzImage)."""

    prefix: str
    name: str
    real_mode: str = ""


PROGRAMS = (
    Program("MEMDISK", "syslinux's memdisk",
            real_mode="its code at code32_start takes the arguments of its own real-mode stub "
                      "(memdisk16.asm), not Linux's boot_params"),
    Program("Memtest86+", "memtest86+"),
)


def flag_names(value: int, names: dict[int, str]) -> list[str]:
    return [name for bit, name in names.items() if value & bit]


def has_setup_header(data: Buffer) -> bool:
    """Whether ``data`` carries a boot.rst setup header: "HdrS" at 0x202 (protocol 2.00+)."""
    return len(data) >= SETUP_HEADER.offset("version") and SETUP_HEADER.get(data, "header") == HDRS_MAGIC


def header_end(data: Buffer) -> int:
    """Where the setup header ends: the target of the 2-byte jump at 0x200, 0x202 + its displacement."""
    return SETUP_HEADER.offset("header") + (SETUP_HEADER.get(data, "jump") >> 8)


def setup_size(setup_sects: int) -> int:
    """Where the protected-mode kernel starts in the file: (setup_sects + 1) sectors, 0 meaning 4."""
    return ((setup_sects or 4) + 1) * SECTOR_SIZE


@dataclass(frozen=True)
class BzImage(Layer):
    """The setup header of a bzImage, with its payload located."""

    FORMAT = "bzimage"
    KERNEL = True
    version: str = "2.00"
    protocol: int = 0x200
    setup_sects: int = 4
    setup_size: int = 0
    header_end: int = 0
    loadflags: int = 0
    loadflags_names: tuple[str, ...] = ()
    # Fields the image's protocol lacks are None (see :meth:`assumed`), except two
    # that loaders read unguarded: kernel_alignment (boot.rst's 0x100000 before 2.05)
    # and xloadflags (0 before 2.12).  The report leaves every absent field out.
    kernel_alignment: int = 0x100000
    relocatable_kernel: int | None = None
    min_alignment: int | None = None
    xloadflags: int = 0
    xloadflags_names: tuple[str, ...] = ()
    cmdline_size: int | None = None
    initrd_addr_max: int | None = None
    init_size: int | None = None
    pref_address: int | None = None
    handover_offset: int | None = None
    kernel_info_offset: int | None = None
    syssize: int | None = None
    payload_offset: int | None = None
    payload_length: int | None = None
    payload_found_by: str = "header"
    decompressed_size: int | None = None
    pe_header: bool = False
    authenticode: bool = False
    #: why the file is shorter than its header declares; None when it is whole
    truncated: str | None = None
    #: the string kernel_version points to, and what it says the image is (see PROGRAMS)
    version_string: str | None = None
    program: str | None = None

    def inner(self) -> Buffer | None:
        if self.payload_offset is None or self.truncated is not None:
            return None
        start = self.setup_size + (self.payload_offset or 0)
        return memoryview(self.data)[start:start + (self.payload_length or 0)]

    def inner_size(self) -> int | None:
        return self.decompressed_size

    def refusal(self) -> FormatError | None:
        if self.truncated is None:
            return None
        payload_end = self.setup_size + (self.payload_offset or 0) + (self.payload_length or 0)
        field = "payload_length" if payload_end > len(self.data) else "syssize"
        return FormatError("bzimage", f"the image is truncated: {self.truncated}", field=field,
                           offset=SETUP_HEADER.offset(field))

    def has(self, name: str) -> bool:
        """Whether the image's protocol version has setup-header field ``name`` (boot.rst)."""
        return self.protocol >= SINCE.get(name, 0)

    def assumed(self, name: str) -> int | None:
        """Field ``name``, or what boot.rst tells a loader to assume when the protocol lacks it."""
        value = getattr(self, name) if self.has(name) else None
        return DEFAULTS.get(name) if value is None else value

    def to_json(self) -> dict:
        """As every layer, without the setup-header fields the protocol does not have."""
        out = super().to_json()
        for name in list(out):
            if not self.has(name) or (name == "xloadflags_names" and not self.has("xloadflags")):
                del out[name]
        return out

    @property
    def setup_bytes(self) -> memoryview:
        """The real-mode part: boot sector and setup, (setup_sects + 1) * 512 bytes."""
        return memoryview(self.data)[:self.setup_size]

    @property
    def kernel_bytes(self) -> memoryview:
        """The protected-mode kernel, which a loader places at code32_start."""
        return memoryview(self.data)[self.setup_size:]


def probe(data: Buffer) -> bool:
    return has_setup_header(data) and SETUP_HEADER.get(data, "boot_flag") == BOOT_FLAG


def parse(data: Buffer) -> BzImage:
    if not probe(data):
        raise FormatError("bzimage", "no 'HdrS' magic with boot_flag 0xAA55",
                          field="header", offset=SETUP_HEADER.offset("header"))
    end = header_end(data)
    version = SETUP_HEADER.get(data, "version")
    fields = SETUP_HEADER.unpack(data, upto=min(end, len(data)))
    present = {k: v for k, v in fields.items() if version >= SINCE.get(k, 0)}
    value = {**DEFAULTS, **present}.get
    setup_sects = value("setup_sects") or 4
    kernel_start = setup_size(setup_sects)
    if kernel_start > len(data):
        raise FormatError("bzimage", f"setup of {kernel_start:#x} bytes is longer than the "
                          f"{len(data):#x}-byte image", field="setup_sects", offset=SETUP_HEADER_OFFSET)
    payload_offset, payload_length, found_by = _payload(data, kernel_start, value)
    syssize = value("syssize") if version >= 0x204 else None
    payload_end = kernel_start + (payload_offset or 0) + (payload_length or 0)
    truncated = _truncated(len(data), kernel_start, syssize, payload_end)
    pe_hdr = _pe_header(data, truncated)
    xloadflags = value("xloadflags") or 0
    loadflags = value("loadflags") or 0
    text = _version_string(data, value("kernel_version"), kernel_start)
    known = _program(text)
    return BzImage(
        arch="x86_64" if xloadflags & XLF_KERNEL_64 else "x86", data=data,
        version=f"{version >> 8}.{version & 0xFF:02d}", protocol=version,
        setup_sects=setup_sects, setup_size=kernel_start, header_end=end,
        loadflags=loadflags, loadflags_names=tuple(flag_names(loadflags, LOADFLAGS)),
        kernel_alignment=value("kernel_alignment"), relocatable_kernel=present.get("relocatable_kernel"),
        min_alignment=present.get("min_alignment"),
        xloadflags=xloadflags, xloadflags_names=tuple(flag_names(xloadflags, XLOADFLAGS)),
        cmdline_size=present.get("cmdline_size"), initrd_addr_max=present.get("initrd_addr_max"),
        init_size=present.get("init_size"), pref_address=present.get("pref_address"),
        handover_offset=value("handover_offset"), kernel_info_offset=value("kernel_info_offset"),
        # boot.rst: before 2.04 the upper half of syssize is unusable, so the size is unknown
        syssize=syssize,
        payload_offset=payload_offset, payload_length=payload_length, payload_found_by=found_by,
        decompressed_size=(_decompressed_size(data, kernel_start + payload_offset + payload_length)
                           if found_by == "header" and payload_end <= len(data) else None),
        pe_header=pe.has_pe_header(data), authenticode=bool(pe_hdr and pe_hdr.signed),
        truncated=truncated, version_string=text, program=known.name if known else None,
    )


def _version_string(data: Buffer, pointer: int | None, setup_end: int) -> str | None:
    """The NUL-terminated string at kernel_version + 0x200, when the header has the field, and the
    string lies in the setup code and is printable text (a pointer into code is not a version)."""
    if not pointer or pointer + 0x200 >= min(setup_end, len(data)):
        return None
    start = pointer + 0x200
    raw = bytes(data[start:min(start + VERSION_STRING_MAX, setup_end, len(data))]).split(b"\0", 1)[0]
    text = raw.decode("latin-1")
    return text if text and raw.isascii() and text.isprintable() else None


def _program(text: str | None) -> Program | None:
    """Linux, or one of PROGRAMS, as the version string says; None when it says neither."""
    if text is None:
        return None
    if LINUX_VERSION.match(text):
        return Program("", "Linux")
    return next((p for p in PROGRAMS if text.startswith(p.prefix)), None)


def program_of(layer: BzImage) -> Program | None:
    """The :class:`Program` ``layer`` is, or None when its version string names none we know."""
    return _program(layer.version_string)


def _pe_header(data: Buffer, truncated: str | None):
    """The EFI stub's PE header; a truncated image's sections may run past its end, and
    the truncation is then what is reported (its signature cannot be read)."""
    if not pe.has_pe_header(data):
        return None
    try:
        return pe.read_header(data, "bzimage")
    except FormatError:
        if truncated is None:
            raise
        return None


def _truncated(size: int, kernel_start: int, syssize: int | None, payload_end: int) -> str | None:
    """How the file falls short of the sizes its header declares, if it does."""
    if payload_end > size:
        return (f"the payload ends at {payload_end:#x} (setup + payload_offset + payload_length) "
                f"but the file is {size:#x} bytes")
    if syssize is not None and size <= kernel_start + (syssize - 1) * 16:
        return (f"syssize {syssize:#x} declares {syssize * 16:#x} bytes of protected-mode code "
                f"after the {kernel_start:#x}-byte setup, but the file is {size:#x} bytes")
    return None


def _payload(data: Buffer, kernel_start: int, value) -> tuple[int | None, int | None, str]:
    """Locate the compressed vmlinux: from the 2.08+ header, else by gzip magic."""
    offset, length = value("payload_offset"), value("payload_length")
    if offset == 0 and length == 0:
        return None, None, "absent"
    if offset is None or length is None:
        found = bytes(data[kernel_start:]).find(GZIP_MAGIC)
        if found < 0:
            return None, None, "absent"
        return found, len(data) - kernel_start - found, "scan"
    if length < 4:
        raise FormatError("bzimage", f"payload_length {length} cannot hold the payload's "
                          "4-byte size", field="payload_length", offset=SETUP_HEADER.offset("payload_length"))
    return offset, length, "header"


def _decompressed_size(data: Buffer, end: int) -> int:
    """The u32 the build appends to the payload (gzip's own ISIZE for gzip)."""
    return int.from_bytes(data[end - 4:end], "little")


FORMAT = Format("bzimage", probe, ignoring_limits(parse), "'HdrS' at 0x202 and 0xAA55 at 0x1fe")
