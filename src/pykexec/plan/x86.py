"""x86 bzImage planners: the kernel's kexec_file loader and a kexec_load (user-space) loader.

``linux-file`` mirrors arch/x86/kernel/kexec-bzimage64.c ``bzImage64_probe``
and ``bzImage64_load``; the segments are added in the kernel's order:

====  ==================  =========  ========  ==========================  ========
#     what                buf_min    top_down  buf_align                   source
====  ==================  =========  ========  ==========================  ========
(0)   KHO scratch array   0          yes       64 KiB                      kernel/kexec_handover.c kho_fill_kimage
(1)   crash: backup       0          no        PAGE_SIZE                   arch/x86/kernel/crash.c (before 5.5)
(1)   crash: elfcorehdr   0          no        ELF_CORE_HEADER_ALIGN       arch/x86/kernel/crash.c crash_load_segments
2     purgatory           0x3000     yes       largest section alignment   kexec_load_purgatory (MIN_PURGATORY_ADDR)
3     boot_params+cmdline 0x3000     yes       16                          MIN_BOOTPARAM_ADDR
4     kernel              1 MiB [*]  yes       kernel_alignment            MIN_KERNEL_LOAD_ADDR, memsz PAGE_ALIGN(init_size)
5     initrd              16 MiB     yes       PAGE_SIZE                   MIN_INITRD_LOAD_ADDR
====  ==================  =========  ========  ==========================  ========

[*] ``max(MIN_KERNEL_LOAD_ADDR, pref_address)`` since 6.8.  The command line
must satisfy ``cmdline_len <= cmdline_size`` and ``cmdline_len +
MAX_ELFCOREHDR_STR_LEN (30) <= cmdline_size`` (both -EINVAL), where
cmdline_len counts the NUL; crash loads get ``"elfcorehdr=0x%lx "`` put in
front.  The entry is the purgatory's (image->start), which jumps to
kernel + 0x200 with %rsi = boot_params.

``linux-user`` plans what a kexec_load loader builds, after kexec-tools
kexec/arch/x86_64/kexec-bzImage64.c ``do_bzImage64_load``: purgatory and the
real-mode/cmdline segment lowest at >= 0x3000, the kernel lowest at >=
max(1 MiB, pref_address) (kexec-tools itself uses 1 MiB), setup_data
(EFI memmap, SETUP_EFI, SETUP_RNG_SEED) each in its own page-aligned segment
highest above 1 MiB (x86-linux-setup.c ``add_setup_data``), and the initrd
highest in [16 MiB, initrd_addr_max]; crash loads first get the backup of the
first 640 KiB and the elfcorehdr (crashdump-x86.c ``load_crashdump_segments``)
and ``" elfcorehdr=<KiB>K"`` appended to the command line.

A bzImage that bzImage64_probe refuses but that has a setup header (2.00+)
and LOADED_HIGH is entered through the 32-bit boot protocol, as kexec-tools'
next loader (kexec/arch/i386/kexec-bzImage.c ``bzImage_probe``,
``do_bzImage_load``) does on x86_64: memtest86+ (2.12 without
XLF_CAN_BE_LOADED_ABOVE_4G), kernels before 2.12.  Everything a 32-bit entry
reads sits below 4 GiB: the kernel at 0x100000 when it is not relocatable,
else lowest in [1 MiB, min(initrd_addr_max, 0x37ffffff)] at kernel_alignment
(DEFAULT_BZIMAGE_ADDR_MAX); the initrd highest in [16 MiB, initrd_addr_max]
(0x37ffffff before 2.03); the command line within cmdline_size (255 before
2.06); setup_data only from 2.09.  The kernel's segment spans init_size
(2.10+), which boot.rst says the kernel needs from its start, so nothing else
is put there.

A bzImage with LOADED_HIGH but no 32-bit entry (``code32_start`` 0: iPXE's
``ipxe.lkrn``), or one whose code32_start is not Linux's 32-bit entry
(syslinux's memdisk: its protected-mode code takes its own real-mode stub's
arguments, :data:`~pykexec.formats.bzimage.PROGRAMS`), starts only through its
real-mode setup code, which calls the BIOS; kexec-tools boots it with
``--real-mode``, and pykexec does so unasked.  boot.rst "Loading the Rest of the Kernel": the purgatory highest
and then the real-mode segment (the image's first ``(setup_sects + 1) * 512``
bytes, its heap and stack up to 64 KiB, then the command line) highest in
[0x3000, 0xA0000), as kexec-tools places both; the kernel as for the 32-bit
entry.  It needs protocol 2.02+ (``cmd_line_ptr``: older setup code moves
itself to 0x90000), a machine booted by a BIOS, and no crash load.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..boot.e820 import backup_source
from ..boot.bootparam import EFI_SETUP_DATA, RNG_SEED_LENGTH, SETUP_DATA_HEADER, SIZEOF_BOOT_PARAMS
from ..errors import PlacementError, UsageError
from ..formats.bzimage import (LOADED_HIGH, SETUP_HEADER, XLF_5LEVEL, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64,
                               BzImage, program_of)
from ..machine.model import Machine
from ..machine.ranges import MiB, PAGE_SIZE, U64_MAX, align_up, human_size
from .common import (LINUX_X86_64_PURGATORY, PurgatorySize, add_fixed, crash_backup, crash_walk,
                     normal_walks, place, require_memory)
from .kexec_buf import KexecBuf, Placer, Segment
from .linux import KernelBehaviour, elfcorehdr_ranges, elfcorehdr_size, user_elfcorehdr_size
from .loadplan import LoadPlan

MIN_PURGATORY_ADDR = 0x3000
MIN_BOOTPARAM_ADDR = 0x3000
MIN_KERNEL_LOAD_ADDR = 0x100000
MIN_INITRD_LOAD_ADDR = 0x1000000
DEFAULT_BZIMAGE_ADDR_MAX = 0x37FFFFFF   # kexec-tools kexec/arch/i386/kexec-x86.h: a relocatable 32-bit kernel's top
FOUR_GIB = 1 << 32
#: the real-mode entry: code, heap and stack in one 64 KiB segment (boot.rst's "X" to "X+10000"), the
#: heap ending 0x200 below its top (heap_end_ptr + 0x200 = the initial sp), all of it and the
#: command line after it below the EBDA and video memory
REAL_MODE_SPAN = 0x10000
REAL_MODE_HEAP_END = 0xFE00
LOW_MEMORY_TOP = 0xA0000
MAX_ELFCOREHDR_STR_LEN = 30  # "elfcorehdr=0x<64bit-value> "
SIZEOF_SETUP_DATA = SETUP_DATA_HEADER.size
SIZEOF_EFI_SETUP_DATA = EFI_SETUP_DATA.size
SIZEOF_IMA_SETUP_DATA = 16  # addr, size
SIZEOF_KHO_DATA = 32        # fdt_addr, fdt_size, scratch_addr, scratch_size
SIZEOF_KHO_SCRATCH = 16     # struct kho_scratch: addr, size
DEFAULT_EFI_MEMDESC_SIZE = 48  # sizeof(efi_memory_desc_t) 40, as firmware reports it (OVMF: 48)


@dataclass(frozen=True)
class BootParamsSize:
    """The components of the boot_params segment bzImage64_load allocates (kbuf.bufsz)."""

    boot_params: int
    cmdline: int
    elfcorehdr_room: int
    efi_map: int
    efi_setup_data: int
    rng_seed: int
    ima: int
    kho: int
    dtb: int

    @property
    def params_cmdline(self) -> int:
        """params_cmdline_sz = ALIGN(sizeof(boot_params) + cmdline_len + MAX_ELFCOREHDR_STR_LEN, 16)."""
        return align_up(self.boot_params + self.cmdline + self.elfcorehdr_room, 16)

    @property
    def total(self) -> int:
        return (self.params_cmdline + align_up(self.efi_map, 16) + self.efi_setup_data + self.rng_seed
                + self.ima + self.kho + self.dtb)


def boot_params_size(machine: Machine, behaviour: KernelBehaviour, cmdline_len: int, *,
                     force_dtb: bool = False, dtb_size: int = 0) -> BootParamsSize:
    """kbuf.bufsz of the boot_params segment, component by component (kexec-bzimage64.c)."""
    efi_map = 0
    if machine.efi and machine.config_enabled("CONFIG_EFI") is not False:
        # efi_get_runtime_map_size(): efi.memmap.nr_map * desc_size (drivers/firmware/efi/runtime-map.c)
        efi_map = (machine.efi_runtime_map_entries or 0) * (machine.efi_memdesc_size or DEFAULT_EFI_MEMDESC_SIZE)
    return BootParamsSize(
        boot_params=SIZEOF_BOOT_PARAMS, cmdline=cmdline_len, elfcorehdr_room=MAX_ELFCOREHDR_STR_LEN,
        efi_map=efi_map, efi_setup_data=SIZEOF_SETUP_DATA + SIZEOF_EFI_SETUP_DATA,
        rng_seed=SIZEOF_SETUP_DATA + RNG_SEED_LENGTH,
        ima=SIZEOF_SETUP_DATA + SIZEOF_IMA_SETUP_DATA if behaviour.ima_kexec else 0,
        # "if (IS_ENABLED(CONFIG_KEXEC_HANDOVER))": the room is there whether KHO is on or not
        kho=SIZEOF_SETUP_DATA + SIZEOF_KHO_DATA if behaviour.kho_setup_data and (
            machine.kho_active or machine.config("CONFIG_KEXEC_HANDOVER") == "y") else 0,
        dtb=SIZEOF_SETUP_DATA + dtb_size if force_dtb else 0)


def probe_file(layer: BzImage, data: bytes, machine: Machine) -> None:
    """bzImage64_probe: every refusal is -ENOEXEC, with the kernel's reason."""
    checks = [
        (len(data) >= 2 * 512, "is shorter than two sectors"),
        (layer.protocol >= 0x020C, f"uses boot protocol {layer.version}; kexec_file_load needs 2.12 or later"),
        (bool(layer.loadflags & LOADED_HIGH), "is a zImage (LOADED_HIGH clear)"),
        (bool(layer.xloadflags & XLF_KERNEL_64), "is not a bzImage64 (XLF_KERNEL_64 clear)"),
        (bool(layer.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G), "cannot be loaded above 4G "
         "(XLF_CAN_BE_LOADED_ABOVE_4G clear)"),
        (not machine.x86_5level or bool(layer.xloadflags & XLF_5LEVEL),
         "cannot handle the 5-level paging the running kernel uses (XLF_5LEVEL clear)"),
    ]
    for ok, why in checks:
        if not ok:
            raise PlacementError(f"kexec_file_load would refuse this bzImage: it {why}", errno="ENOEXEC")


def _cmdline_bytes(cmdline: str | None) -> int:
    return len((cmdline or "").encode()) + 1


def _kernel_kbuf(layer: BzImage, data: bytes, *, buf_min: int, top_down: bool) -> KexecBuf:
    if layer.init_size is None:
        raise PlacementError("the bzImage has no init_size (protocol before 2.10)", errno="ENOEXEC")
    return KexecBuf("kernel", bufsz=len(data) - layer.setup_size, memsz=align_up(layer.init_size, PAGE_SIZE),
                    buf_align=layer.kernel_alignment, buf_min=buf_min, top_down=top_down,
                    buffer=memoryview(data)[layer.setup_size:])


def _check_alignment(layer: BzImage) -> None:
    a = layer.kernel_alignment
    if a <= 0 or a & (a - 1):
        raise PlacementError(f"kernel_alignment {a:#x} is not a power of two; the kernel's ALIGN() cannot "
                             "honour it", role="kernel", errno="EINVAL")


def plan_file(layer: BzImage, data: bytes, *, machine: Machine, crash: bool, initrd: bytes | None,
              cmdline: str | None, purgatory: PurgatorySize = LINUX_X86_64_PURGATORY,
              force_dtb: bool = False) -> LoadPlan:
    """What ``kexec_file_load`` on the running kernel does with this bzImage."""
    probe_file(layer, data, machine)
    _check_alignment(layer)
    beh = KernelBehaviour.of(machine)
    cmdline_len = _cmdline_bytes(cmdline)
    if cmdline_len > layer.cmdline_size:
        raise PlacementError(f"the command line is {cmdline_len} bytes with its NUL; this kernel takes at most "
                             f"{layer.cmdline_size} (cmdline_size)", errno="EINVAL")
    if cmdline_len + MAX_ELFCOREHDR_STR_LEN > layer.cmdline_size:
        raise PlacementError(f"the command line is {cmdline_len} bytes with its NUL; kexec_file_load keeps "
                             f"{MAX_ELFCOREHDR_STR_LEN} of the kernel's {layer.cmdline_size} for "
                             f"'elfcorehdr=', so at most {layer.cmdline_size - MAX_ELFCOREHDR_STR_LEN} fit",
                             errno="EINVAL")
    placer = Placer(page_size=machine.page_size, exact_top_down=beh.exact_top_down)
    walks = [crash_walk(machine)] if crash else normal_walks(machine, file_mode=True, rev_walk=beh.rev_walk)
    notes = [n for n in (beh.note(),) if n]
    if not crash and machine.kho_active:
        count = len(machine.kho_scratch)
        place(placer, KexecBuf("kho-scratch", SIZEOF_KHO_SCRATCH * count, SIZEOF_KHO_SCRATCH * count,
                               buf_align=64 * 1024, top_down=True), walks)
    elf_addr = None
    if crash:
        require_memory(machine)
        if beh.crash_backup_region:
            # crash.c before 5.5: determine_backup_region, then an unsigned long crash_zero_bytes as the buffer
            backup = backup_source(machine)
            if backup is not None:
                place(placer, KexecBuf("backup", 8, backup.size, top_down=False, buffer=bytes(8)), walks)
        nr = elfcorehdr_ranges(machine, exclude_low_1m=not beh.crash_backup_region)
        bufsz, memsz = elfcorehdr_size(machine, nr, beh)
        elf = place(placer, KexecBuf("elfcorehdr", bufsz, memsz, buf_align=4096, top_down=False), walks)
        elf_addr = elf.mem
        if machine.possible_cpus is None:
            notes.append("possible CPUs unknown; the elfcorehdr is sized for 1")
    pur = place(placer, KexecBuf("purgatory", purgatory.bufsz, purgatory.memsz, buf_align=purgatory.align,
                                 buf_min=MIN_PURGATORY_ADDR, top_down=True), walks)
    bp = boot_params_size(machine, beh, cmdline_len, force_dtb=force_dtb, dtb_size=machine.fdt_size or 0)
    params = place(placer, KexecBuf("boot-params", bp.total, bp.total, buf_align=16,
                                    buf_min=MIN_BOOTPARAM_ADDR, top_down=True), walks)
    kmin = max(MIN_KERNEL_LOAD_ADDR, layer.pref_address) if beh.pref_address_min else MIN_KERNEL_LOAD_ADDR
    place(placer, _kernel_kbuf(layer, data, buf_min=kmin, top_down=True), walks)
    if initrd is not None:
        place(placer, KexecBuf("initrd", len(initrd), len(initrd), buf_align=PAGE_SIZE,
                               buf_min=MIN_INITRD_LOAD_ADDR, top_down=True, buffer=initrd), walks)
    final = cmdline or ""
    if crash:
        final = f"elfcorehdr={elf_addr:#x} " + final
    return LoadPlan(target="linux-file", crash=crash, entry=pur.mem + purgatory.entry_offset, cmdline=final,
                    segments=tuple(placer.segments), arch="x86_64", machine=machine, entry_arg=params.mem,
                    notes=tuple(notes), boot_params=bp)


# -- kexec_load (user space) -------------------------------------------------------------

def probe_user(layer: BzImage, data: bytes) -> None:
    """kexec-tools bzImage64_probe: protocol 2.12+, LOADED_HIGH, XLF_KERNEL_64 and ABOVE_4G."""
    need = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    if len(data) < 1024 or layer.protocol < 0x020C or not layer.loadflags & LOADED_HIGH \
            or layer.xloadflags & need != need:
        raise PlacementError(f"not a relocatable bzImage64 (protocol {layer.version}, loadflags "
                             f"{layer.loadflags:#x}, xloadflags {layer.xloadflags:#x}); the bzImage64 "
                             "loader needs 2.12+, LOADED_HIGH and XLF_KERNEL_64|XLF_CAN_BE_LOADED_ABOVE_4G",
                             errno="ENOEXEC")


ENTRIES = {64: "64-bit", 32: "32-bit", 16: "real-mode"}
"""The entries a kexec_load bzImage loader can start a kernel at, by width (kexec-tools' bzImage64
loader, its bzImage loader, and that loader with ``--real-mode``)."""


def user_entry(layer: BzImage, data: bytes, wanted: int | None = None) -> int:
    """The entry a kexec_load loader uses, 64, 32 or 16, trying kexec-tools' x86_64 loaders in order:
    bzImage64_probe, then bzImage_probe (2.00+ and LOADED_HIGH: the 32-bit boot protocol, or real
    mode when the image declares no 32-bit entry).  ``wanted`` asks for one (kexec-tools'
    ``--entry-32bit``, ``--real-mode``), refused when the image does not have it."""
    if wanted not in (None, *ENTRIES):
        raise UsageError(f"unknown entry {wanted!r}; choose one of {', '.join(map(str, ENTRIES))}")
    if wanted == 64:
        probe_user(layer, data)
        return 64
    if wanted is None:
        try:
            probe_user(layer, data)
            return 64
        except PlacementError:
            pass
    if len(data) < 1024 or not layer.loadflags & LOADED_HIGH:
        raise PlacementError(f"a zImage (protocol {layer.version}, LOADED_HIGH clear): its kernel loads at "
                             "0x10000 and starts only through its real-mode setup code; pykexec enters "
                             "bzImages through the 32-bit or 64-bit boot protocol", errno="ENOEXEC")
    why = real_mode_reason(layer, data)
    if wanted == 32 and why:
        raise PlacementError(f"no 32-bit entry: {why}", errno="ENOEXEC")
    return wanted or (16 if why else 32)


def real_mode_reason(layer: BzImage, data: bytes) -> str | None:
    """Why only the image's real-mode setup code can start it, or None when the 32-bit entry can:
    it declares no 32-bit entry, or it is a program whose code32_start is not Linux's entry."""
    if not SETUP_HEADER.get(data, "code32_start"):
        return ("code32_start (0x214) is 0: the image declares no 32-bit entry and starts only through its "
                "real-mode setup code")
    program = program_of(layer)
    if program is not None and program.real_mode:
        return (f"the image is {program.name} (kernel_version {layer.version_string!r}), and {program.real_mode}; "
                "it starts only through its real-mode setup code")
    return None


def build_user_segments(layer: BzImage, data: bytes, *, machine: Machine, crash: bool, initrd: bytes | None,
                        cmdline: str | None, walks: list, placer: Placer,
                        purgatory: PurgatorySize, entry: int | None = None,
                        ) -> tuple[Segment, Segment, str, list[str]]:
    """Place a kexec_load bzImage load through ``entry`` (None: the image's first, see
    :func:`user_entry`); returns (purgatory, setup segment, final cmdline, notes)."""
    bits = user_entry(layer, data, entry)
    if bits < 64 and crash:
        why = "" if entry else f" (protocol {layer.version}, not a relocatable bzImage64)"
        raise PlacementError(f"kdump (--crash) through the {ENTRIES[bits]} entry{why} is not supported; "
                             "load a bzImage64 capture kernel through its 64-bit entry", errno="ENOEXEC")
    if bits == 16:
        return _user16_segments(layer, data, machine=machine, initrd=initrd, cmdline=cmdline, walks=walks,
                                placer=placer, purgatory=purgatory)
    if bits == 32:
        return _user32_segments(layer, data, machine=machine, initrd=initrd, cmdline=cmdline, walks=walks,
                                placer=placer, purgatory=purgatory)
    notes: list[str] = []
    final = cmdline or ""
    if crash:
        require_memory(machine)
        backup = crash_backup(machine)
        if backup is not None:
            place(placer, backup[1], walks)
        bufsz, memsz = user_elfcorehdr_size(machine)
        elf = place(placer, KexecBuf("elfcorehdr", bufsz, memsz, buf_align=PAGE_SIZE, top_down=False), walks)
        final = f"{final} elfcorehdr={elf.mem >> 10}K".lstrip()
    cmdline_len = len(final.encode()) + 1
    if cmdline_len > layer.cmdline_size:
        raise PlacementError(f"the command line is {cmdline_len} bytes with its NUL"
                             f"{' and elfcorehdr=' if crash else ''}; this kernel takes at most "
                             f"{layer.cmdline_size} (cmdline_size)", errno="EINVAL")
    pur = place(placer, KexecBuf("purgatory", purgatory.bufsz, purgatory.memsz, buf_align=purgatory.align,
                                 buf_min=MIN_PURGATORY_ADDR, top_down=False), walks)
    setup_size = max(layer.setup_size, 4096) + cmdline_len
    setup = place(placer, KexecBuf("boot-params", setup_size, setup_size, buf_align=16,
                                   buf_min=MIN_BOOTPARAM_ADDR, top_down=False), walks)
    place(placer, _kernel_kbuf(layer, data, buf_min=max(MIN_KERNEL_LOAD_ADDR, layer.pref_address),
                               top_down=False), walks)
    if machine.efi:
        entries = machine.efi_runtime_map_entries or 0
        if entries:
            size = entries * (machine.efi_memdesc_size or DEFAULT_EFI_MEMDESC_SIZE)
            place(placer, KexecBuf("efi-memmap", size, size, buf_min=MiB, top_down=True), walks)
        size = SIZEOF_SETUP_DATA + SIZEOF_EFI_SETUP_DATA
        place(placer, KexecBuf("setup-data-efi", size, size, buf_min=MiB, top_down=True), walks)
    size = SIZEOF_SETUP_DATA + RNG_SEED_LENGTH
    place(placer, KexecBuf("setup-data-rng", size, size, buf_min=MiB, top_down=True), walks)
    if initrd is not None:
        top = layer.initrd_addr_max if not layer.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G else U64_MAX
        place(placer, KexecBuf("initrd", len(initrd), len(initrd), buf_align=PAGE_SIZE,
                               buf_min=MIN_INITRD_LOAD_ADDR, buf_max=top, top_down=True, buffer=initrd), walks)
    return pur, setup, final, notes


def _old_protocol_cmdline(layer: BzImage, cmdline: str | None) -> tuple[str, int]:
    """The command line and its length with the NUL, within ``cmdline_size`` (255 before 2.06)."""
    final = cmdline or ""
    cmdline_len = len(final.encode()) + 1
    limit = layer.assumed("cmdline_size")
    if cmdline_len > limit:
        raise PlacementError(f"the command line is {cmdline_len} bytes with its NUL; this kernel (protocol "
                             f"{layer.version}) takes at most {limit} (cmdline_size"
                             f"{'' if layer.has('cmdline_size') else ', 255 before 2.06'})", errno="EINVAL")
    return final, cmdline_len


def _user32_segments(layer: BzImage, data: bytes, *, machine: Machine, initrd: bytes | None,
                     cmdline: str | None, walks: list, placer: Placer,
                     purgatory: PurgatorySize) -> tuple[Segment, Segment, str, list[str]]:
    """The 32-bit boot protocol's segments, all below 4 GiB (kexec-bzImage.c ``do_bzImage_load``)."""
    final, cmdline_len = _old_protocol_cmdline(layer, cmdline)
    notes = [f"32-bit boot protocol (protocol {layer.version}): kexec-tools' bzImage loader, not bzImage64"]
    _user32_kernel(layer, data, machine=machine, walks=walks, placer=placer, notes=notes)
    pur = place(placer, KexecBuf("purgatory", purgatory.bufsz, purgatory.memsz, buf_align=purgatory.align,
                                 buf_min=MIN_PURGATORY_ADDR, buf_max=FOUR_GIB - 1, top_down=False), walks)
    setup_size = max(layer.setup_size, 4096) + cmdline_len
    setup = place(placer, KexecBuf("boot-params", setup_size, setup_size, buf_align=16,
                                   buf_min=MIN_BOOTPARAM_ADDR, buf_max=FOUR_GIB - 1, top_down=False), walks)
    if layer.has("setup_data"):
        size = SIZEOF_SETUP_DATA + RNG_SEED_LENGTH
        place(placer, KexecBuf("setup-data-rng", size, size, buf_min=MiB, buf_max=FOUR_GIB - 1, top_down=True),
              walks)
    if machine.efi:
        notes.append("a 32-bit entry gets no EFI state (no EFI memory map or system table)")
    if initrd is not None:
        place(placer, KexecBuf("initrd", len(initrd), len(initrd), buf_align=PAGE_SIZE,
                               buf_min=MIN_INITRD_LOAD_ADDR, buf_max=layer.assumed("initrd_addr_max"),
                               top_down=True, buffer=initrd), walks)
    return pur, setup, final, notes


def _user16_segments(layer: BzImage, data: bytes, *, machine: Machine, initrd: bytes | None,
                     cmdline: str | None, walks: list, placer: Placer,
                     purgatory: PurgatorySize) -> tuple[Segment, Segment, str, list[str]]:
    """The real-mode entry's segments (kexec-bzImage.c ``do_bzImage_load`` with ``real_mode_entry``):
    purgatory and real-mode segment below 0xA0000, the kernel and initrd as for the 32-bit entry."""
    why = real_mode_reason(layer, data) or "the real-mode entry was asked for (kexec-tools --real-mode)"
    if machine.efi:
        raise PlacementError(f"{why}, which calls the BIOS; this machine booted through UEFI and has no "
                             "BIOS to call", errno="ENOEXEC")
    if not layer.has("cmd_line_ptr"):
        raise PlacementError(f"{why}; before protocol 2.02 (this is {layer.version}) that code moves itself "
                             "to 0x90000, which pykexec does not arrange", errno="ENOEXEC")
    final, cmdline_len = _old_protocol_cmdline(layer, cmdline)
    if layer.setup_size > REAL_MODE_HEAP_END - 0x200:
        raise PlacementError(f"the real-mode code is {layer.setup_size:#x} bytes (setup_sects); with its heap "
                             f"and stack it must fit in {REAL_MODE_HEAP_END:#x}", errno="ENOEXEC")
    notes = [f"real-mode entry (protocol {layer.version}): {why}"]
    _user32_kernel(layer, data, machine=machine, walks=walks, placer=placer, notes=notes)
    pur = place(placer, KexecBuf("purgatory", purgatory.bufsz, purgatory.memsz, buf_align=purgatory.align,
                                 buf_min=MIN_PURGATORY_ADDR, buf_max=LOW_MEMORY_TOP - 1, top_down=True), walks)
    size = REAL_MODE_SPAN + cmdline_len
    setup = place(placer, KexecBuf("boot-params", size, size, buf_align=16, buf_min=MIN_BOOTPARAM_ADDR,
                                   buf_max=LOW_MEMORY_TOP - 1, top_down=True), walks)
    if initrd is not None:
        place(placer, KexecBuf("initrd", len(initrd), len(initrd), buf_align=PAGE_SIZE,
                               buf_min=MIN_INITRD_LOAD_ADDR, buf_max=layer.assumed("initrd_addr_max"),
                               top_down=True, buffer=initrd), walks)
    return pur, setup, final, notes


def _user32_kernel(layer: BzImage, data: bytes, *, machine: Machine, walks: list, placer: Placer,
                   notes: list[str]) -> Segment:
    """The protected-mode kernel: at 0x100000 unless relocatable (2.05+), spanning init_size (2.10+)."""
    size = len(data) - layer.setup_size
    memsz = align_up(max(size, layer.init_size or 0), PAGE_SIZE)
    kernel = memoryview(data)[layer.setup_size:]
    if layer.relocatable_kernel:
        _check_alignment(layer)
        top = min(layer.assumed("initrd_addr_max"), DEFAULT_BZIMAGE_ADDR_MAX)
        return place(placer, KexecBuf("kernel", size, memsz, buf_align=layer.kernel_alignment,
                                      buf_min=MIN_KERNEL_LOAD_ADDR, buf_max=top, top_down=False,
                                      buffer=kernel), walks)
    notes.append(f"not relocatable: the kernel goes to {MIN_KERNEL_LOAD_ADDR:#x}")
    return add_fixed(placer, Segment("kernel", MIN_KERNEL_LOAD_ADDR, memsz, size, kernel), machine, crash=False)


def plan_user(layer: BzImage, data: bytes, *, machine: Machine, crash: bool, initrd: bytes | None,
              cmdline: str | None, purgatory: PurgatorySize, entry: int | None = None) -> LoadPlan:
    """What a kexec_load loader (kexec-tools' bzImage64 or bzImage loader, or pykexec's) would load,
    through ``entry`` (None: the image's first)."""
    if user_entry(layer, data, entry) == 64:
        _check_alignment(layer)
    placer = Placer(page_size=machine.page_size, exact_top_down=True, max_segments=None)
    walks = [crash_walk(machine)] if crash else normal_walks(machine, file_mode=False, rev_walk=True)
    pur, setup, final, notes = build_user_segments(layer, data, machine=machine, crash=crash, initrd=initrd,
                                                   cmdline=cmdline, walks=walks, placer=placer,
                                                   purgatory=purgatory, entry=entry)
    notes.append(f"purgatory size {human_size(purgatory.memsz)} ({purgatory.measured_from})")
    return LoadPlan(target="linux-user", crash=crash, entry=pur.mem + purgatory.entry_offset, cmdline=final,
                    segments=tuple(placer.segments), arch="x86_64", machine=machine, entry_arg=setup.mem,
                    notes=tuple(notes))
