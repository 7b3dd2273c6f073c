"""A complete arm64 kexec_load: the Image, the initrd, the device tree and the purgatory.

Debian builds its arm64 kernels without CONFIG_KEXEC_FILE, so there
``kexec_load`` is the only way to kexec, and user space makes every byte.
:func:`build_arm64_load` does, from an Image prepared from anything the
formats layer unwraps (Image.gz, EFI zboot, an aa64 UKI):

* **kernel** (Documentation/arch/arm64/booting.rst): a 2 MiB-aligned base,
  as low in free memory as it fits (memory below the base is lost to the
  linear map of a kernel without the "anywhere" placement flag), with room
  for ``text_offset + image_size``; the segment starts at base +
  ``text_offset``, and that is the entry.  Little-endian only, a non-zero
  ``image_size`` (3.17+), and a page size the CPU supports where that is
  known (``Machine.cpu_page_sizes``, from ``ID_AA64MMFR0_EL1``: a machine
  description can say; Linux hides the register's granule fields from user
  space, so on the host only the running kernel's own page size is certain).
* **initrd, DTB, purgatory**: top-down above the kernel and below
  ``round_down(base, 1 GiB) + 32 GiB``, as kexec-tools'
  ``arm64_load_other_segments`` and the kernel's own kexec_file loader place
  them.
* **the device tree** (:func:`device_tree`): ``--dtb FILE``, else the UKI's
  matching ``.dtbauto`` or its ``.dtb``, else the running kernel's
  /sys/firmware/fdt, with /chosen edited as drivers/of/kexec.c
  ``of_kexec_alloc_and_setup_fdt`` edits it.
* **the purgatory** (:mod:`.purgatory.arm64`): checks every segment's
  SHA-256, reports a mismatch on the console ``/chosen/stdout-path`` names,
  and enters the kernel with x0 = the DTB.

Memory is memblock's free memory as /proc/iomem shows it (System RAM
without the kernel, reserved and no-map children): firmware-reserved memory
such as GIC LPI tables must survive into the next kernel.  The whole plan
goes through the Linux validator before it is returned.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import LoadRefused, NotLoadable, PlacementError, UsageError, UserLoadRefused
from ..formats.arm64_image import Arm64Image
from ..formats.layer import Buffer
from ..machine import fdt
from ..machine.model import Machine
from ..machine.ranges import GiB, align_down, align_up
from ..plan.common import crash_walk, place, require_memory
from ..plan.arm64 import RNG_SEED_SIZE  # /chosen/rng-seed: as many bytes as the kernel's own loader
from ..plan.kexec_buf import KexecBuf, Placer, Segment, Walk
from ..plan.loadplan import LoadPlan
from . import elfcore
from .purgatory import arm64 as purgatory
from .purgatory import regions_for
from .usermode import UserLoad

MIN_KIMG_ALIGN = 2 << 20            # arch/arm64/include/asm/boot.h
KASLR_SEED_SIZE = 8                 # /chosen/kaslr-seed: one u64
#: /chosen properties that describe the running kernel and must not reach a normal load's kernel
STALE_PROPERTIES = ("linux,elfcorehdr", "linux,usable-memory-range", "linux,ima-kexec-buffer")
#: compatible strings of consoles the purgatory drives: PL011 and 8250/16550 UARTs
PL011 = ("arm,pl011", "arm,sbsa-uart")
NS8250 = ("ns16550a", "ns16550", "ns8250", "snps,dw-apb-uart", "brcm,bcm2835-aux-uart")


@dataclass(frozen=True)
class DeviceTree:
    """The DTB a load hands the new kernel: where it came from and what was changed.

    ``set`` names the /chosen properties written (seeds by name only: their
    values are secrets of the next kernel), ``removed`` those deleted.
    """

    blob: bytes = dataclasses.field(repr=False)
    source: str
    set: tuple[str, ...]
    removed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "size": len(self.blob), "set": list(self.set), "removed": list(self.removed)}

    def __str__(self) -> str:
        changed = ", ".join([*(f"set {n}" for n in self.set), *(f"removed {n}" for n in self.removed)])
        return f"device tree from {self.source}, {len(self.blob)} bytes: {changed or 'unchanged'}"


def build_arm64_load(prepared: Any, *, initrd: Buffer | None, cmdline: str | None, crash: bool,
                     machine: Machine, modules: Sequence[Any] = (), checks: bool = True,
                     image_name: str = "kernel", dtb: Buffer | None = None, verbose: bool = False,
                     getrandom: Callable[[int], bytes] = os.getrandom,
                     sys_root: str | Path = "/sys", proc_root: str | Path = "/proc",
                     crash_sources: elfcore.CrashSources | None = None) -> UserLoad:
    """Build a kexec_load of ``prepared`` (a :class:`~pykexec.formats.prepare.Prepared` or an
    :class:`Arm64Image`) on the arm64 ``machine``.

    ``dtb`` is the device tree to start from (``--dtb``; default: see
    :func:`_dtb_start`); ``cmdline`` None keeps its bootargs.
    ``checks=False`` makes the purgatory skip its SHA-256 checks (``kexec
    -i``); ``verbose`` makes it report on the console even when all is well.
    ``image_name`` is unused here (a Multiboot loader's), taken so that every
    builder takes the same arguments.  ``crash`` loads a capture kernel into
    the crash region, with an ELF core header made from ``crash_sources``
    (default: read from ``sys_root`` and ``proc_root``).
    """
    layer = getattr(prepared, "kernel_layer", prepared)
    if not isinstance(layer, Arm64Image):
        raise NotLoadable(layer.format, "is not an arm64 Image; kexec_load on arm64 boots Images "
                          "(and what unwraps to one: Image.gz, EFI zboot, UKI)")
    if modules:
        raise UsageError("--module is for Multiboot images (Xen on x86); an arm64 kernel takes an initrd")
    kernel = getattr(prepared, "kernel", None)
    kernel = layer.kernel_bytes if kernel is None else kernel
    notes = _check_kernel(layer, machine)
    require_memory(machine)
    placer = Placer(page_size=machine.page_size, exact_top_down=True, max_segments=None)
    walks = [crash_walk(machine)] if crash else [Walk("memblock free", machine.memblock_free_ranges())]
    kseg = _place_kernel(placer, layer, kernel, walks)
    base = kseg.mem - layer.text_offset
    above = dict(buf_align=machine.page_size, buf_min=kseg.end, buf_max=align_down(base, GiB) + 32 * GiB - 1,
                 top_down=True)
    elf = None
    if crash:
        sources = crash_sources or elfcore.read_sources(sys=sys_root, proc=proc_root, machine=machine,
                                                        arch="arm64")
        elf = _elfcorehdr(placer, walks, above, machine, sources, notes)
    iseg = None
    if initrd is not None:
        iseg = place(placer, KexecBuf("initrd", len(initrd), len(initrd), **above, buffer=initrd), walks)
    start = _dtb_start(dtb, prepared, Path(sys_root))
    tree = device_tree(start[0], source=start[1], cmdline=cmdline,
                       initrd=None if iseg is None else (iseg.mem, iseg.mem + len(initrd)), getrandom=getrandom,
                       elfcorehdr=None if elf is None else (elf.mem, elf.bufsz),
                       usable=[(r.start, r.size) for r in reversed(machine.crash_regions())] if crash else ())
    dseg = place(placer, KexecBuf("dtb", len(tree.blob), len(tree.blob), **above, buffer=tree.blob), walks)
    notes.append(str(tree))
    return _finish(placer, walks, above, machine, kernel=kseg, dtb=dseg, tree=tree, notes=notes,
                   checks=checks, verbose=verbose, crash=crash)


def _elfcorehdr(placer: Placer, walks: list, above: dict, machine: Machine, sources: elfcore.CrashSources,
                notes: list[str]) -> Segment:
    """The ELF core header of the memory the capture kernel may read (System RAM minus the crash
    regions, the CPUs' crash notes, vmcoreinfo), in the crash region above the kernel."""
    notes.extend(f"crash: {path}: {why}" for path, why in sources.unreadable)
    if not sources.cpu_notes:
        notes.append("crash: no CPU crash notes found; the dump will have no register state")
    header = elfcore.build(elfcore.crash_ranges(machine), sources=sources, machine=elfcore.EM_AARCH64)
    memsz = align_up(len(header), machine.page_size)
    return place(placer, KexecBuf("elfcorehdr", len(header), memsz, **above, buffer=header), walks)


def _finish(placer: Placer, walks: list, above: dict, machine: Machine, *, kernel: Segment, dtb: Segment,
            tree: DeviceTree, notes: list[str], checks: bool, verbose: bool, crash: bool) -> UserLoad:
    """Place the purgatory, give it every other segment's digest, and validate the whole load."""
    pg = purgatory.load()
    size = pg.size(machine.page_size)
    pseg = place(placer, KexecBuf("purgatory", size.bufsz, size.memsz, **above), walks)
    segments = [s for s in placer.segments if s is not pseg]
    params = purgatory.Params(entry=kernel.mem, x0=dtb.mem, regions=regions_for(segments) if checks else (),
                              uart=_uart(tree.blob, notes), skip_checks=not checks, verbose=verbose)
    image = pg.patched(params)
    pseg = dataclasses.replace(pseg, buffer=image, bufsz=len(image))
    plan = LoadPlan(target="linux-user", crash=crash, entry=pseg.mem, cmdline=fdt.chosen(tree.blob).get("bootargs"),
                    segments=(*segments, pseg), arch="arm64", machine=machine, entry_arg=dtb.mem,
                    notes=tuple(notes), device_tree=tree)
    violations = plan.validate()
    if violations:
        raise UserLoadRefused("the kernel would refuse this kexec_load: "
                              + "; ".join(str(v) for v in violations), violations)
    return UserLoad(plan=plan, protocol="linux")


def _check_kernel(layer: Arm64Image, machine: Machine) -> list[str]:
    """What booting.rst requires of the Image, and what this CPU can run; notes on what is unknown."""
    if not layer.image_size:
        raise PlacementError("the Image header's image_size is 0 (a kernel before 3.17): how much memory "
                             "it needs is unknown", role="kernel", errno="ENOEXEC")
    if layer.endianness == "big":
        raise PlacementError("the Image is big-endian; pykexec's purgatory enters little-endian kernels",
                             role="kernel", errno="ENOEXEC")
    wanted, cpu = layer.page_size, machine.cpu_page_sizes
    if wanted and cpu is not None and wanted not in cpu:
        raise PlacementError(f"the Image runs with {wanted // 1024}K pages, but this CPU supports only "
                             f"{', '.join(f'{s // 1024}K' for s in cpu)} (ID_AA64MMFR0_EL1)",
                             role="kernel", errno="ENOEXEC")
    if wanted and cpu is None and wanted != machine.page_size:
        return [f"the Image runs with {wanted // 1024}K pages and this kernel with {machine.page_size // 1024}K; "
                "whether the CPU has that granule is unknown (Linux hides ID_AA64MMFR0_EL1's granule fields "
                "from user space): a CPU without it cannot boot the Image"]
    return []


def _place_kernel(placer: Placer, layer: Arm64Image, kernel: Buffer, walks: list) -> Segment:
    """The lowest 2 MiB-aligned base with room for text_offset + image_size; the segment starts at
    base + text_offset."""
    memsz = layer.text_offset + max(layer.image_size, len(kernel))
    span = place(placer, KexecBuf("kernel", memsz, memsz, buf_align=MIN_KIMG_ALIGN, top_down=False), walks)
    placer.remove_last()
    seg = Segment("kernel", span.mem + layer.text_offset, align_up(span.memsz - layer.text_offset,
                                                                   placer.page_size), len(kernel), kernel)
    return placer.add_fixed(seg)


def _dtb_start(given: Buffer | None, prepared: Any, sys_root: Path) -> tuple[bytes, str]:
    """The DTB to edit and where it came from, as systemd-stub would choose for a UKI.

    ``--dtb`` first; then the UKI's first ``.dtbauto`` whose root compatible
    matches the running DTB's; then the UKI's ``.dtb``; then the running
    kernel's own (/sys/firmware/fdt).
    """
    if given is not None:
        return bytes(given), "the DTB given"
    auto, uki_dtb = getattr(prepared, "dtbauto", ()), getattr(prepared, "dtb", None)
    running = None
    if auto or uki_dtb is None:
        running = _running_dtb(sys_root, required=uki_dtb is None)
    if auto and running is not None:
        compat = fdt.first_compatible(running[0])
        for i, candidate in enumerate(auto):
            if compat is not None and fdt.first_compatible(bytes(candidate)) == compat:
                return bytes(candidate), f"the UKI's .dtbauto #{i} ({compat})"
    if uki_dtb is not None:
        return bytes(uki_dtb), "the UKI's .dtb"
    return running


def _running_dtb(sys_root: Path, *, required: bool) -> tuple[bytes, str] | None:
    path = sys_root / "firmware/fdt"
    try:
        return path.read_bytes(), str(path)
    except OSError as e:
        if not required:
            return None
        who = " (only root reads it)" if e.errno in (errno.EACCES, errno.EPERM) else ""
        raise LoadRefused(f"no device tree for the new kernel: {path}: {e.strerror}{who}; "
                          "pass --dtb FILE") from None


def device_tree(blob: bytes, *, source: str, cmdline: str | None, initrd: tuple[int, int] | None,
                getrandom: Callable[[int], bytes] = os.getrandom, elfcorehdr: tuple[int, int] | None = None,
                usable: Sequence[tuple[int, int]] = ()) -> DeviceTree:
    """``blob`` with /chosen made ready for the next kernel.

    ``bootargs`` (kept when ``cmdline`` is None), ``linux,initrd-start``/``-end``
    (removed without an initrd), fresh ``kaslr-seed`` and ``rng-seed`` so that
    the next kernel randomises its layout and seeds its RNG, and the running
    kernel's kdump and IMA properties removed.  A capture kernel gets
    ``linux,elfcorehdr`` (address, size) and ``linux,usable-memory-range``
    (``usable``: the crash regions, high first) instead.  ``linux,kho-*`` are
    left to the kernel.  The result is packed and at most 2 MiB.
    """
    ed = fdt.FdtEditor(blob)
    written, removed = [], []
    if elfcorehdr is not None:
        ed.set_reg("/chosen", "linux,elfcorehdr", [elfcorehdr])
        ed.set_reg("/chosen", "linux,usable-memory-range", list(usable))
        written += ["linux,elfcorehdr", "linux,usable-memory-range"]
    if cmdline is not None:
        ed.set_string("/chosen", "bootargs", cmdline)
        written.append("bootargs")
    if initrd is not None:
        ed.set_u64("/chosen", "linux,initrd-start", initrd[0])
        ed.set_u64("/chosen", "linux,initrd-end", initrd[1])
        written += ["linux,initrd-start", "linux,initrd-end"]
    stale = STALE_PROPERTIES if elfcorehdr is None else tuple(p for p in STALE_PROPERTIES if p not in written)
    for name in (() if initrd is not None else ("linux,initrd-start", "linux,initrd-end")) + stale:
        if ed.delete("/chosen", name):
            removed.append(name)
    ed.set("/chosen", "kaslr-seed", getrandom(KASLR_SEED_SIZE))
    ed.set("/chosen", "rng-seed", getrandom(RNG_SEED_SIZE))
    written += ["kaslr-seed", "rng-seed"]
    out = ed.blob()
    if len(out) > fdt.MAX_FDT_SIZE:
        raise LoadRefused(f"the device tree from {source} is {len(out)} bytes once edited; the arm64 "
                          f"kernel takes at most {fdt.MAX_FDT_SIZE} (booting.rst)")
    return DeviceTree(out, source, tuple(written), tuple(removed))


def _uart(blob: bytes, notes: list[str]) -> purgatory.Uart:
    """The console the purgatory reports on: the UART /chosen/stdout-path names, if it drives it."""
    dev = fdt.stdout_device(blob)
    if dev is None:
        notes.append("the device tree names no console (/chosen/stdout-path): the purgatory stays silent")
        return purgatory.Uart()
    if any(c in PL011 for c in dev.compatible):
        return purgatory.Uart.pl011(dev.address)
    if any(c in NS8250 for c in dev.compatible):
        return purgatory.Uart.ns8250(dev.address, shift=dev.reg_shift, width=dev.reg_io_width)
    notes.append(f"the console {dev.path} ({', '.join(dev.compatible) or 'no compatible'}) is neither a "
                 "PL011 nor an 8250: the purgatory stays silent")
    return purgatory.Uart()
