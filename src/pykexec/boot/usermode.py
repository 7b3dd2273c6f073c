"""A complete kexec_load for a prepared image: every segment's bytes and the entry.

With kexec_load the kernel copies segments and jumps; user space builds every
byte.  :func:`build_user_load` does that for x86_64:

* **bzImage** (Linux x86 boot protocol, 64-bit entry at kernel + 0x200, or
  the 32-bit entry at the kernel's start for what bzImage64_probe refuses, or
  real mode at the setup code for what has no 32-bit entry): the
  segments the ``linux-user`` planner places (:func:`pykexec.plan.x86.build_user_segments`,
  kexec-tools' layout), filled here: zero page and command line, EFI runtime map,
  SETUP_EFI, SETUP_RNG_SEED, SETUP_E820_EXT when the map has more than 128 entries;
* **vmlinux ELF**: PT_LOAD segments at their physical addresses (moved as a
  whole, 2 MiB aligned, into the crash region for kdump), a zero page with a
  synthetic header, entry at ``e_entry`` with %rsi = boot_params (kexec-tools
  kexec/arch/x86_64/kexec-elf-x86_64.c, ``--args-linux``);
* **Multiboot2 / Multiboot 1** (Xen): :mod:`.multiboot_info`, entered in 32-bit
  protected mode with paging off by the purgatory;
* **kdump** (Linux only): the backup of the first 640 KiB and the ELF core
  header (:mod:`.elfcore`) placed first in the crash region, ``elfcorehdr=``
  (and with ``pass_memmap_cmdline`` ``memmap=exactmap ...``) on the command
  line, the capture kernel's e820 in the zero page.

Then the purgatory (:mod:`.purgatory`) gets every other segment's SHA-256 and
the entry registers, and the whole plan goes through the Linux validator
(:func:`pykexec.plan.validate.validate_linux`) before anything is returned:
a plan the kernel would refuse raises :class:`~pykexec.errors.UserLoadRefused`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import FormatError, NotLoadable, PlacementError, UsageError, UserLoadRefused
from ..formats.bzimage import STARTUP_64_OFFSET, XLF_EFI_KEXEC, BzImage
from ..formats.elf import Elf
from ..formats.layer import Buffer
from ..formats.multiboot import Multiboot
from ..formats.multiboot2 import Multiboot2
from ..machine.model import Machine
from ..machine.ranges import U64_MAX, MiB, Range, align_down, align_up
from ..plan import x86 as plan_x86
from ..plan.common import add_fixed, crash_backup, crash_walk, normal_walks, place, require_memory
from ..plan.kexec_buf import KexecBuf, Placer, Segment
from ..plan.loadplan import LoadPlan
from . import e820 as e820_mod
from . import elfcore, multiboot_info, purgatory, zeropage
from .firmware import Firmware, read_firmware
from .multiboot_info import Module, MultibootImage, PlacedModule

log = logging.getLogger(__name__)

X86_PHYSICAL_ALIGN = 0x200000        # CONFIG_PHYSICAL_ALIGN, what __startup_64 requires of a moved vmlinux
FOUR_GIB = 1 << 32
PROTOCOLS = ("linux", "multiboot2", "multiboot")


@dataclass(frozen=True)
class UserLoad:
    """A kexec_load built in user space: its plan, whose segments carry every byte.

    This is the whole hand-off to the kexec_load backend (and what a dry run
    shows); ``protocol`` is how the image is entered ("linux", "multiboot2",
    "multiboot").
    """

    plan: LoadPlan
    protocol: str

    @property
    def entry(self) -> int:
        return self.plan.entry

    @property
    def crash(self) -> bool:
        return self.plan.crash

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.plan.segments

    @property
    def cmdline(self) -> str | None:
        return self.plan.cmdline

    @property
    def notes(self) -> tuple[str, ...]:
        return self.plan.notes

    def segment(self, role: str) -> Segment:
        """The segment planned as ``role`` ("kernel", "initrd", "boot-params", ...)."""
        for planned in self.plan.segments:
            if planned.role == role:
                return planned
        raise KeyError(f"no {role} segment; the segments are "
                       f"{', '.join(s.role for s in self.plan.segments)}")


def build_user_load(prepared, *, initrd: Buffer | None, cmdline: str | None, crash: bool, machine: Machine,
                    modules: Sequence[Module] = (), checks: bool = True, protocol: str | None = None,
                    firmware: Firmware | None = None, crash_sources: elfcore.CrashSources | None = None,
                    getrandom: Callable[[int], bytes] = os.getrandom, verbose: bool = False,
                    serial_port: int = purgatory.SERIAL_COM1, on_failure: str = "halt",
                    pass_memmap_cmdline: bool = False,
                    image_name: str = "kernel", sys_root: str | Path = "/sys",
                    proc_root: str | Path = "/proc", dev_mem: str | Path | None = "/dev/mem",
                    dtb: Buffer | None = None, entry: int | None = None) -> UserLoad:
    """Build a kexec_load for ``prepared`` (a :class:`pykexec.formats.prepare.Prepared`) on ``machine``.

    ``checks=False`` makes the purgatory skip the SHA-256 checks (``kexec -i``);
    ``on_failure`` is what it does after a mismatch: "halt" (as kexec-tools) or "reset".
    ``verbose`` makes it report on ``serial_port`` even when all is well.
    ``protocol`` forces "linux", "multiboot2" or "multiboot" (default: from the
    image; an ELF with a Multiboot2 header boots by Multiboot2, as kexec-tools'
    probe order has it).  ``firmware`` and ``crash_sources`` default to reading
    ``sys_root``/``proc_root``; ``dev_mem`` (None: not at all) is where the ACPI RSDP is read
    for Multiboot2's ACPI tags.  ``modules`` are Multiboot modules
    (:func:`multiboot_info.load_module` reads ``--module FILE[,cmdline]``).  ``entry`` is a
    bzImage's entry, 64, 32 or 16 (real mode); None: the first the image has
    (:func:`pykexec.plan.x86.user_entry`).
    """
    layer = prepared.kernel_layer
    kind = protocol or _protocol(layer)
    if kind not in PROTOCOLS:
        raise UsageError(f"unknown boot protocol {kind!r}; choose one of {', '.join(PROTOCOLS)}")
    if machine.arch not in (None, "x86_64"):
        raise PlacementError(f"user-mode loading is implemented for x86_64; the machine is {machine.arch}",
                             errno="ENOEXEC")
    if on_failure not in ("halt", "reset"):
        raise UsageError(f"on_failure is 'halt' or 'reset', not {on_failure!r}")
    if dtb is not None:
        raise UsageError("--dtb is for arm64 kernels; pykexec hands an x86 kernel no device tree "
                         "(SETUP_DTB is not supported)")
    if entry is not None and not isinstance(layer, BzImage):
        raise UsageError(f"--entry chooses a bzImage's entry, and this image is {layer.format}")
    if modules and kind == "linux":
        raise UsageError("--module is for Multiboot images (Xen); a Linux kernel takes an initrd")
    require_memory(machine)
    firmware = read_firmware(sys_root) if firmware is None else firmware
    ctx = _Context(machine=machine, crash=crash, checks=checks, firmware=firmware, getrandom=getrandom,
                   verbose=verbose, serial_port=serial_port, pass_memmap=pass_memmap_cmdline,
                   reset_on_failure=on_failure == "reset",
                   sys_root=Path(sys_root), proc_root=Path(proc_root), crash_sources=crash_sources,
                   dev_mem=None if dev_mem is None else Path(dev_mem), entry=entry)
    if kind == "linux":
        if isinstance(layer, BzImage):
            return _bzimage(ctx, layer, prepared.kernel, initrd, cmdline)
        if isinstance(layer, Elf):
            return _vmlinux(ctx, layer, initrd, cmdline)
        raise NotLoadable(layer.format, "is not a Linux image a kexec_load can boot on x86_64 "
                          "(a bzImage or a vmlinux ELF)")
    if crash:
        raise UsageError(f"kdump (--crash) into a {kind} image is not supported; load a Linux "
                         "capture kernel")
    if initrd is not None:
        raise UsageError(f"a {kind} image takes modules, not an initrd: pass --module FILE[,cmdline]")
    image = (multiboot_info.multiboot2_image if kind == "multiboot2" else multiboot_info.multiboot1_image)(
        layer, bytes(layer.data))
    return _multiboot(ctx, image, kind, modules, cmdline, image_name)


def _protocol(layer) -> str:
    if isinstance(layer, BzImage):
        return "linux"
    if isinstance(layer, Multiboot2):
        return "multiboot2"
    if isinstance(layer, Multiboot):
        return "multiboot"
    if isinstance(layer, Elf):
        mb2, mb1 = multiboot_info.headers(layer)
        if mb2 is not None:
            return "multiboot2"
        if layer.machine == "EM_X86_64":
            return "linux"
        if mb1 is not None:
            return "multiboot"
        raise NotLoadable("elf", f"an {layer.machine} ELF without a Multiboot header; user mode boots "
                          "x86_64 vmlinux files and Multiboot images")
    raise NotLoadable(layer.format, "has no kexec_load loader (bzImage, vmlinux ELF, Multiboot 1 and 2)")


@dataclass
class _Context:
    machine: Machine
    crash: bool
    checks: bool
    firmware: Firmware
    getrandom: Callable[[int], bytes]
    verbose: bool
    serial_port: int
    pass_memmap: bool
    reset_on_failure: bool
    sys_root: Path
    proc_root: Path
    crash_sources: elfcore.CrashSources | None
    dev_mem: Path | None = None
    entry: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def page(self) -> int:
        return self.machine.page_size

    def placer(self) -> Placer:
        return Placer(page_size=self.page, exact_top_down=True, max_segments=None)

    def walks(self) -> list:
        return [crash_walk(self.machine)] if self.crash else normal_walks(self.machine, file_mode=False,
                                                                          rev_walk=True)


# -- Linux: bzImage -------------------------------------------------------------------------------

def _bzimage(ctx: _Context, layer: BzImage, data: Buffer, initrd: Buffer | None, cmdline: str | None) -> UserLoad:
    bits = plan_x86.user_entry(layer, data, ctx.entry)
    if bits == 16:
        return _bzimage_real_mode(ctx, layer, data, initrd, cmdline)
    pg = purgatory.load()
    placer, walks = ctx.placer(), ctx.walks()
    final = cmdline or ""
    crash = _crash_segments(ctx, placer, walks, final) if ctx.crash and bits == 64 else None
    if crash is not None:
        final = crash.cmdline
    pur, setup, final, notes = plan_x86.build_user_segments(
        layer, data, machine=ctx.machine, crash=ctx.crash and bits == 32, initrd=initrd, cmdline=final,
        walks=walks, placer=placer, purgatory=pg.size(ctx.page), entry=ctx.entry)
    ctx.notes.extend(notes)
    e820 = crash.e820 if crash is not None else e820_mod.from_machine(ctx.machine)
    table, e820_ext = zeropage.e820_table(e820)
    if e820_ext is not None and not layer.has("setup_data"):
        ctx.notes.append(f"protocol {layer.version} has no setup_data: the e820 map is cut to its first "
                         f"{len(table)} entries")
        e820_ext = None
    if e820_ext is not None:
        place(placer, KexecBuf("setup-data-e820", e820_ext.size, e820_ext.size, buf_min=MiB,
                               buf_max=FOUR_GIB - 1 if bits == 32 else U64_MAX, top_down=True), walks)
    segs = {s.role: s for s in placer.segments}
    kernel, cmdline_off = segs["kernel"], max(layer.setup_size, 4096)
    fills: dict[str, Buffer] = {"kernel": memoryview(data)[layer.setup_size:]}
    nodes: list[tuple[int, zeropage.SetupData]] = []
    if e820_ext is not None:
        nodes.append((segs["setup-data-e820"].mem, e820_ext))
    efi_memmap = _efi(ctx, layer.xloadflags & XLF_EFI_KEXEC, segs, fills, nodes) if bits == 64 else None
    if "setup-data-rng" in segs:
        nodes.append((segs["setup-data-rng"].mem, zeropage.rng_seed(ctx.getrandom)))
    for addr, raw in zeropage.chain(nodes):
        fills[_role_at(segs, addr)] = raw
    initrd_seg = segs.get("initrd")
    params = zeropage.BootParams(
        header=zeropage.setup_header(data), e820=table,
        cmd_line_ptr=setup.mem + cmdline_off if layer.has("cmd_line_ptr") else 0,
        cl_offset=None if layer.has("cmd_line_ptr") else cmdline_off,
        ramdisk_image=initrd_seg.mem if initrd_seg else 0, ramdisk_size=len(initrd) if initrd else 0,
        setup_data=nodes[0][0] if nodes else 0,
        firmware=ctx.firmware if bits == 64 else dataclasses.replace(ctx.firmware, efi=None),
        efi_memmap=efi_memmap, code32_start=kernel.mem if bits == 32 else None)
    fills["boot-params"] = _params_segment(params.pack(), cmdline_off, final, setup.bufsz)
    if initrd is not None:
        fills["initrd"] = initrd
    # boot.rst: the 64-bit entry is kernel + 0x200; the 32-bit entry is the kernel's first byte.
    regs = {"rsi": setup.mem, "rip": kernel.mem + (STARTUP_64_OFFSET if bits == 64 else 0)}
    return _finish(ctx, placer, fills, regs, entry32=bits == 32, cmdline=final, entry_arg=setup.mem,
                   protocol="linux", crash=crash)


def _bzimage_real_mode(ctx: _Context, layer: BzImage, data: Buffer, initrd: Buffer | None,
                       cmdline: str | None) -> UserLoad:
    """The real-mode entry: the setup code gets the BIOS, and builds the zero page from it."""
    placer, walks = ctx.placer(), ctx.walks()
    _, setup, final, notes = plan_x86.build_user_segments(
        layer, data, machine=ctx.machine, crash=ctx.crash, initrd=initrd, cmdline=cmdline, walks=walks,
        placer=placer, purgatory=purgatory.load().size(ctx.page), entry=ctx.entry)
    ctx.notes.extend(notes)
    segs = {s.role: s for s in placer.segments}
    kernel, initrd_seg = segs["kernel"], segs.get("initrd")
    real = zeropage.real_mode_segment(
        data, layer.setup_size, base=setup.mem, span=plan_x86.REAL_MODE_SPAN, heap_end=plan_x86.REAL_MODE_HEAP_END,
        cmdline=final, ramdisk_image=initrd_seg.mem if initrd_seg else 0,
        ramdisk_size=len(initrd) if initrd else 0, code32_start=kernel.mem)
    fills: dict[str, Buffer] = {"kernel": memoryview(data)[layer.setup_size:], "boot-params": real}
    if initrd is not None:
        fills["initrd"] = initrd
    return _finish(ctx, placer, fills, {}, entry32=False, cmdline=final, entry_arg=setup.mem, protocol="linux",
                   crash=None, real_mode=purgatory.RealMode.linux(setup.mem, plan_x86.REAL_MODE_HEAP_END))


def _role_at(segs: dict[str, Segment], addr: int) -> str:
    return next(role for role, s in segs.items() if s.mem == addr)


def _params_segment(zero_page: bytes, cmdline_off: int, cmdline: str, bufsz: int) -> bytes:
    raw = cmdline.encode() + b"\0"
    out = bytearray(max(bufsz, cmdline_off + len(raw)))
    out[:len(zero_page)] = zero_page
    out[cmdline_off:cmdline_off + len(raw)] = raw
    return bytes(out)


def _efi(ctx: _Context, image_efi: int, segs: dict[str, Segment], fills: dict[str, bytes],
         nodes: list) -> tuple[int, int] | None:
    """Fill the EFI segments the planner placed; pass EFI only when the image and the system can."""
    efi = ctx.firmware.efi
    placed = "efi-memmap" in segs and "setup-data-efi" in segs
    for role in ("efi-memmap", "setup-data-efi"):
        if role in segs:
            fills[role] = b""     # stays zeros unless EFI is passed below
    if efi is None:
        if ctx.machine.efi:
            ctx.notes.append("the machine boots by EFI but its EFI state is unreadable "
                             f"({'; '.join(w for _, w in ctx.firmware.unreadable) or 'unknown'}); "
                             "the next kernel gets no EFI runtime services")
        return None
    if not image_efi:
        ctx.notes.append("the image lacks XLF_EFI_KEXEC: no EFI state passed (kexec-tools does the same)")
        return None
    if not placed:
        ctx.notes.append("the machine description says no EFI, so no EFI segments were planned")
        return None
    runtime_map = zeropage.efi_runtime_map(efi)
    if len(runtime_map) > segs["efi-memmap"].memsz:
        ctx.notes.append(f"the EFI runtime map ({len(runtime_map)} bytes) outgrew its planned segment "
                         f"({segs['efi-memmap'].memsz}); no EFI state passed")
        return None
    fills["efi-memmap"] = runtime_map
    nodes.append((segs["setup-data-efi"].mem, zeropage.efi_setup_data(efi)))
    return segs["efi-memmap"].mem, len(runtime_map)


# -- Linux: vmlinux ELF ---------------------------------------------------------------------------

def _vmlinux(ctx: _Context, elf: Elf, initrd: bytes | None, cmdline: str | None) -> UserLoad:
    if elf.machine != "EM_X86_64" or elf.elf_class != 64:
        raise NotLoadable("elf", f"a {elf.elf_class}-bit {elf.machine} ELF; the Linux 64-bit entry needs "
                          "an x86_64 vmlinux")
    loads = [s for s in elf.loads if s.p_memsz]
    if not loads:
        raise FormatError("elf", "no PT_LOAD segment to load", field="PT_LOAD")
    pg = purgatory.load()
    placer, walks = ctx.placer(), ctx.walks()
    link_base = min(s.p_paddr for s in loads)
    link_end = max(s.p_paddr + s.p_memsz for s in loads)
    delta = 0
    if ctx.crash:
        # __startup_64 handles a physical load offset that is a multiple of 2 MiB.
        span = align_up(link_end, ctx.page) - align_down(link_base, X86_PHYSICAL_ALIGN)
        probe = place(placer, KexecBuf("kernel", span, span, buf_align=X86_PHYSICAL_ALIGN, top_down=False),
                      walks)
        placer.remove_last()
        delta = probe.mem - align_down(link_base, X86_PHYSICAL_ALIGN)
        ctx.notes.append(f"vmlinux moved by {delta:#x} into the crash region (CONFIG_RELOCATABLE kernels "
                         "handle a 2 MiB-aligned physical offset)")
    pieces = [(s.p_paddr + delta, bytes(elf.segment_bytes(s)), s.p_memsz) for s in loads]
    for i, seg in enumerate(_page_segments(pieces, ctx.page)):
        _add_fixed(ctx, placer, dataclasses.replace(seg, role="kernel" if i == 0 else f"kernel-{i}"))
    entry = _elf_entry(elf, loads) + delta
    final = cmdline or ""
    crash = _crash_segments(ctx, placer, walks, final) if ctx.crash else None
    if crash is not None:
        final = crash.cmdline
    raw_cmdline = final.encode() + b"\0"
    if len(raw_cmdline) > zeropage.COMMAND_LINE_SIZE:
        raise PlacementError(f"the command line is {len(raw_cmdline)} bytes with its NUL; x86 kernels take at "
                             f"most {zeropage.COMMAND_LINE_SIZE}", errno="EINVAL")
    size = pg.size(ctx.page)
    place(placer, KexecBuf("purgatory", size.bufsz, size.memsz, buf_min=plan_x86.MIN_PURGATORY_ADDR,
                           buf_max=FOUR_GIB - 1), walks)
    params_size = 4096 + len(raw_cmdline)
    setup = place(placer, KexecBuf("boot-params", params_size, params_size, buf_align=16,
                                   buf_min=plan_x86.MIN_BOOTPARAM_ADDR, buf_max=FOUR_GIB - 1), walks)
    e820 = crash.e820 if crash is not None else e820_mod.from_machine(ctx.machine)
    table, e820_ext = zeropage.e820_table(e820)
    nodes: list[tuple[int, zeropage.SetupData]] = []
    fills: dict[str, bytes] = {s.role: s.buffer for s in placer.segments if s.buffer is not None}
    for role, node in (("setup-data-e820", e820_ext), ("setup-data-rng", zeropage.rng_seed(ctx.getrandom))):
        if node is not None:
            seg = place(placer, KexecBuf(role, node.size, node.size, buf_min=MiB, top_down=True), walks)
            nodes.append((seg.mem, node))
    by_role = {s.role: s for s in placer.segments}
    for addr, raw in zeropage.chain(nodes):
        fills[_role_at(by_role, addr)] = raw
    initrd_seg = None
    if initrd is not None:
        initrd_seg = place(placer, KexecBuf("initrd", len(initrd), len(initrd), buf_min=plan_x86.MIN_INITRD_LOAD_ADDR,
                                            top_down=True, buffer=initrd), walks)
        fills["initrd"] = initrd
    ctx.notes.append("a vmlinux gets a synthetic setup header and no EFI state (as kexec-tools' ELF loader)")
    params = zeropage.BootParams(
        header=zeropage.synthetic_header(), e820=table, cmd_line_ptr=setup.mem + 4096,
        ramdisk_image=initrd_seg.mem if initrd_seg else 0, ramdisk_size=len(initrd) if initrd else 0,
        setup_data=nodes[0][0] if nodes else 0, firmware=dataclasses.replace(ctx.firmware, efi=None))
    fills["boot-params"] = params.pack() + raw_cmdline
    regs = {"rsi": setup.mem, "rip": entry}
    return _finish(ctx, placer, fills, regs, entry32=False, cmdline=final, entry_arg=setup.mem,
                   protocol="linux", crash=crash)


def _elf_entry(elf: Elf, loads) -> int:
    """The physical entry: e_entry as is when a segment's physical range holds it (vmlinux links
    ``phys_startup_64``), else through the segment whose virtual range holds it."""
    for s in loads:
        if s.p_paddr <= elf.entry < s.p_paddr + s.p_memsz:
            return elf.entry
    for s in loads:
        if s.p_vaddr <= elf.entry < s.p_vaddr + s.p_memsz:
            return elf.entry - s.p_vaddr + s.p_paddr
    raise FormatError("elf", f"entry point {elf.entry:#x} is in no PT_LOAD segment", field="e_entry")


def _page_segments(pieces: Sequence[tuple[int, bytes, int]], page: int) -> list[Segment]:
    """Pieces at physical addresses as page-aligned segments, merged where they share a page."""
    spans: list[list] = []
    for paddr, data, memsz in sorted(pieces, key=lambda p: p[0]):
        start, end = align_down(paddr, page), align_up(paddr + memsz, page)
        if spans and start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
            spans[-1][2].append((paddr, data))
        else:
            spans.append([start, end, [(paddr, data)]])
    out = []
    for start, end, parts in spans:
        top = max(p - start + len(d) for p, d in parts)
        buf = bytearray(top)
        for paddr, data in parts:
            buf[paddr - start:paddr - start + len(data)] = data
        out.append(Segment("kernel", start, end - start, len(buf), bytes(buf)))
    return out


def _add_fixed(ctx: _Context, placer: Placer, seg: Segment) -> None:
    add_fixed(placer, seg, ctx.machine, crash=ctx.crash)


# -- kdump --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Crash:
    cmdline: str
    e820: tuple[e820_mod.E820Entry, ...]
    backup: Segment | None
    backup_source: Range | None
    elfcorehdr: Segment


def _crash_segments(ctx: _Context, placer: Placer, walks: list, cmdline: str) -> _Crash:
    """Backup of the first 640 KiB, then the ELF core header (crashdump-x86.c order), both low in
    the crash region; ``elfcorehdr=<KiB>K`` on the command line."""
    machine = ctx.machine
    sources = ctx.crash_sources
    if sources is None:
        sources = elfcore.read_sources(sys=ctx.sys_root, proc=ctx.proc_root, machine=machine)
    for path, why in sources.unreadable:
        ctx.notes.append(f"crash: {path}: {why}")
    if not sources.cpu_notes:
        ctx.notes.append("crash: no CPU crash notes found; the dump will have no register state")
    source, backup = None, None
    planned = crash_backup(machine)
    if planned is not None:
        source, kbuf = planned
        backup = place(placer, kbuf, walks)
    ranges = elfcore.crash_ranges(machine)
    header = elfcore.build(ranges, sources=sources,
                           backup=elfcore.Backup(source, backup.mem) if backup is not None else None)
    memsz = elfcore.user_memsz(len(header), ctx.page)
    elf = place(placer, KexecBuf("elfcorehdr", len(header), memsz, top_down=False, buffer=header), walks)
    keep_out = [elf.range] + ([backup.range] if backup is not None else [])
    e820 = e820_mod.crash_map(machine, keep_out=keep_out, backup=source)
    final = f"{cmdline} elfcorehdr={elf.mem >> 10}K".strip()
    if ctx.pass_memmap:
        final = f"{final} {e820_mod.memmap_cmdline(e820)}"
    return _Crash(final, e820, backup, source, elf)


# -- Multiboot ----------------------------------------------------------------------------------

def _multiboot(ctx: _Context, image: MultibootImage, kind: str, modules: Sequence[Module],
               cmdline: str | None, image_name: str) -> UserLoad:
    ctx.notes.extend(image.notes)
    pg = purgatory.load()
    placer, walks = ctx.placer(), ctx.walks()
    low, high, align, top_down = multiboot_info.choose_base(image)
    delta = 0
    if image.relocatable is not None:
        size = image.link_end - image.link_base
        kbuf = KexecBuf("kernel", size, size, buf_align=_pow2_floor(align), buf_min=low,
                        buf_max=high + size - 1, top_down=top_down)
        probe = place(placer, kbuf, walks)
        placer.remove_last()
        delta = probe.mem - image.link_base
    pieces = [(p.paddr + delta, p.data, p.memsz) for p in image.pieces]
    for paddr, _, memsz in pieces:
        if paddr < multiboot_info.LOW_MEMORY_END:
            raise PlacementError(f"the image loads at {paddr:#x}, inside the low 1 MiB (BIOS data area, "
                                 "real-mode IVT); pykexec keeps it untouched (seed 004)", role="kernel",
                                 errno="EADDRNOTAVAIL")
        if paddr + memsz > FOUR_GIB:
            raise PlacementError(f"the image ends at {paddr + memsz:#x}, above 4 GiB, where a 32-bit "
                                 "Multiboot entry cannot reach", role="kernel", errno="EADDRNOTAVAIL")
    for i, seg in enumerate(_page_segments(pieces, ctx.page)):
        _add_fixed(ctx, placer, dataclasses.replace(seg, role="kernel" if i == 0 else f"kernel-{i}"))
    fills: dict[str, bytes] = {s.role: s.buffer for s in placer.segments if s.buffer is not None}
    placed_modules = []
    for i, m in enumerate(modules):
        seg = place(placer, KexecBuf(f"module-{i}", len(m.data), max(len(m.data), 1), buf_min=MiB,
                                     buf_max=FOUR_GIB - 1, top_down=True, buffer=m.data), walks)
        fills[seg.role] = m.data
        placed_modules.append(PlacedModule(seg.mem, seg.mem + len(m.data), m.string))
    e820 = e820_mod.from_machine(ctx.machine)
    text = f"{image_name} {cmdline}" if cmdline else image_name
    load_base = image.link_base + delta if image.relocatable is not None else None
    rsdp = _rsdp(ctx) if kind == "multiboot2" else (None, None)

    def info(base: int) -> bytes:
        if kind == "multiboot2":
            return multiboot_info.multiboot2_info(cmdline=text, modules=placed_modules, e820=e820,
                                                  load_base=load_base, rsdp_v1=rsdp[0], rsdp_v2=rsdp[1])
        return multiboot_info.multiboot1_info(base, cmdline=text, modules=placed_modules, e820=e820)

    size = len(info(MiB))
    mbi = place(placer, KexecBuf("mbi", size, size, buf_min=MiB, buf_max=FOUR_GIB - 1, top_down=True), walks)
    fills["mbi"] = info(mbi.mem)
    place(placer, KexecBuf("purgatory", pg.size(ctx.page).bufsz, pg.size(ctx.page).memsz, buf_min=MiB,
                           buf_max=FOUR_GIB - 1, top_down=True), walks)
    regs = {"rax": image.magic, "rbx": mbi.mem, "rip": image.entry + delta}
    return _finish(ctx, placer, fills, regs, entry32=True, cmdline=text, entry_arg=mbi.mem, protocol=kind,
                   crash=None)


def _pow2_floor(value: int) -> int:
    """The largest power of two not above ``value`` (a relocatable tag's align need not be one)."""
    return 1 << (max(value, 1).bit_length() - 1)


def _rsdp(ctx: _Context) -> tuple[bytes | None, bytes | None]:
    """The ACPI RSDP's bytes for the Multiboot2 ACPI tags, read from /dev/mem when possible."""
    addr = ctx.firmware.acpi_rsdp
    if not addr or ctx.dev_mem is None:
        return None, None
    try:
        with open(ctx.dev_mem, "rb") as f:
            f.seek(addr)
            raw = f.read(36)
    except OSError as e:
        ctx.notes.append(f"ACPI RSDP at {addr:#x} unreadable ({e.strerror}); the image must find ACPI itself")
        return None, None
    return parse_rsdp(raw)


def parse_rsdp(raw: bytes) -> tuple[bytes | None, bytes | None]:
    """(ACPI 1.0 RSDP, ACPI 2.0+ RSDP) from the bytes at the RSDP address, checksums verified."""
    if len(raw) < 20 or raw[:8] != b"RSD PTR " or sum(raw[:20]) & 0xFF:
        return None, None
    if raw[15] >= 2 and len(raw) >= 36:
        length = struct.unpack_from("<I", raw, 20)[0]
        if length >= 36 and len(raw) >= length and not sum(raw[:length]) & 0xFF:
            return None, bytes(raw[:length])
    return bytes(raw[:20]), None


# -- the end: purgatory, validation, kexec_load's arguments ------------------------------------------

def _finish(ctx: _Context, placer: Placer, fills: dict[str, Buffer], regs: dict[str, int], *, entry32: bool,
            cmdline: str, entry_arg: int, protocol: str, crash: _Crash | None,
            real_mode: purgatory.RealMode | None = None) -> UserLoad:
    pg = purgatory.load()
    segments: list[Segment] = []
    for seg in placer.segments:
        if seg.role == "purgatory":
            segments.append(seg)
            continue
        data = fills.get(seg.role, seg.buffer)
        if data is None:
            raise PlacementError(f"internal: no bytes for segment {seg.role}", role=seg.role, errno="EINVAL")
        if len(data) > seg.memsz:
            raise PlacementError(f"{seg.role} holds {len(data)} bytes but was planned with {seg.memsz}",
                                 role=seg.role, errno="EINVAL")
        segments.append(dataclasses.replace(seg, buffer=data, bufsz=len(data)))  # no copy: views stay views
    regions = () if not ctx.checks else purgatory.regions_for(
        [s for s in segments if s.role != "purgatory"])
    backup = crash.backup if crash is not None else None
    params = purgatory.Params(
        regs=regs, regions=regions, entry32=entry32, real_mode=real_mode, skip_checks=not ctx.checks,
        verbose=ctx.verbose, reset_on_failure=ctx.reset_on_failure, serial_port=ctx.serial_port,
        backup_src=crash.backup_source.start if backup is not None else 0,
        backup_dst=backup.mem if backup is not None else 0,
        backup_size=crash.backup_source.size if backup is not None else 0)
    image = pg.patched(params)
    index = next(i for i, s in enumerate(segments) if s.role == "purgatory")
    pur = dataclasses.replace(segments[index], buffer=image, bufsz=len(image))
    segments[index] = pur
    plan = LoadPlan(target="linux-user", crash=ctx.crash, entry=pur.mem, cmdline=cmdline,
                    segments=tuple(segments), arch="x86_64", machine=ctx.machine, entry_arg=entry_arg,
                    notes=tuple(ctx.notes))
    violations = plan.validate()
    if violations:
        raise UserLoadRefused("the kernel would refuse this kexec_load: "
                          + "; ".join(str(v) for v in violations), violations)
    return UserLoad(plan=plan, protocol=protocol)
