"""arm64 Image planner: the kernel's kexec_file loader.

Mirrors arch/arm64/kernel/kexec_image.c ``image_load`` and
arch/arm64/kernel/machine_kexec_file.c ``load_other_segments``:

* The Image needs ``image_size != 0`` (booting.rst: pre-3.17 kernels have 0)
  and an endianness the running kernel supports; else -EINVAL.
* kernel: bottom-up from 0, ``buf_align = MIN_KIMG_ALIGN`` (2 MiB),
  ``memsz = image_size + text_offset``; once placed, the segment is moved up
  by ``text_offset`` (``kernel_segment->mem += text_offset``) and that is the
  entry.  If the other segments do not fit, the kernel segment is dropped and
  retried above the hole it took (``kbuf.buf_min = mem + memsz``).
* everything else goes above the kernel (``buf_min = kernel end``):
  crash elfcorehdr top-down aligned to 64 KiB; initrd bottom-up below
  ``round_down(kernel, 1 GiB) + 32 GiB``; the DTB top-down aligned to 2 MiB
  ("not across 2MB boundary").
* arm64 keeps memblock (CONFIG_ARCH_KEEP_MEMBLOCK), so holes come from
  memblock's free ranges; crash loads use crashk_res whole.

The DTB is the running kernel's own (``initial_boot_params``, which
/sys/firmware/fdt shows) with /chosen rewritten by drivers/of/kexec.c
``of_kexec_alloc_and_setup_fdt``, then ``fdt_pack``-ed.  When the machine
description carries that DTB (``Machine.fdt``), :func:`kexec_file_dtb` makes
the same libfdt edits in the same order, so the segment's size is the
kernel's to the byte (the seeds' values are the kernel's secret; their sizes
are not).  Without it the size is estimated from ``fdt_size``.
"""

from __future__ import annotations

import struct
from typing import Sequence

from ..errors import FormatError, PlacementError
from ..formats.arm64_image import Arm64Image
from ..machine.model import Machine
from ..machine.fdt import FdtEditor
from ..machine.ranges import GiB, PAGE_SIZE, Range, align_down, align_up
from .common import crash_walk, normal_walks, place
from .kexec_buf import KexecBuf, Placer, Segment
from .linux import KernelBehaviour, elfcorehdr_size
from .loadplan import LoadPlan

MIN_KIMG_ALIGN = 2 << 20
SZ_64K = 64 << 10
DEFAULT_DTB_SIZE = 0x2000
RNG_SEED_SIZE = 128           # drivers/of/kexec.c
# bootargs, linux,initrd-start/-end, kaslr-seed, rng-seed (128 bytes) and for crash
# linux,elfcorehdr and linux,usable-memory-range: a 12-byte FDT_PROP header, the value
# and a possibly new name in the strings block each.
DTB_PROPERTIES_ESTIMATE = 7 * 12 + 8 + 8 + 8 + 128 + 16 + 32 + 120


def dtb_size(machine: Machine, cmdline: str | None) -> int:
    """The estimate used when the boot DTB itself is unknown: its packed size plus room for
    every property the kernel may add."""
    base = machine.fdt_size or DEFAULT_DTB_SIZE
    return base + len((cmdline or "").encode()) + 1 + DTB_PROPERTIES_ESTIMATE


def kexec_file_dtb(boot: bytes, *, machine: Machine, cmdline: str | None, initrd: tuple[int, int] | None,
                   elfcorehdr: tuple[int, int] | None = None, usable: Sequence[Range] = ()) -> bytes:
    """The DTB the kernel's kexec_file loader hands the next kernel, with zeroed seeds.

    drivers/of/kexec.c ``of_kexec_alloc_and_setup_fdt``, step by step, on a
    copy of the boot DTB (``initial_boot_params``): drop the running kernel's
    ``linux,elfcorehdr`` and ``linux,usable-memory-range``; drop the
    reservation of the initrd it booted with (exact size, else rounded up to a
    page); set ``linux,initrd-start``/``-end`` as u64 and reserve the new
    initrd, or delete them; for a crash image ``linux,elfcorehdr`` (reserved
    too) and ``linux,usable-memory-range`` (crashk_res, then crashk_low_res) in
    the root's cells; ``linux,kho-*`` dropped where KEXEC_HANDOVER is built;
    ``bootargs`` set or deleted; ``kaslr-seed`` deleted and, when the RNG is
    ready, a u64 ``kaslr-seed`` and a 128-byte ``rng-seed``; the empty
    ``linux,booted-from-kexec``; ``linux,ima-kexec-buffer`` dropped with its
    reservation; then ``fdt_pack``.  ``initrd`` and ``elfcorehdr`` are
    (address, size).

    Not predicted: a firmware reservation of the DTB itself (the kernel
    drops it by its physical address, which user space does not see) and an
    IMA measurement buffer (CONFIG_IMA_KEXEC adds one more segment).
    """
    ed = FdtEditor(boot)
    ed.node("/chosen")
    ed.delete("/chosen", "linux,elfcorehdr")
    ed.delete("/chosen", "linux,usable-memory-range")
    start, end = ed.get("/chosen", "linux,initrd-start"), ed.get("/chosen", "linux,initrd-end")
    if start is not None:
        if end is None:
            raise PlacementError("the boot device tree has /chosen/linux,initrd-start without "
                                 "linux,initrd-end; the kernel refuses to build the next one", role="dtb",
                                 errno="EINVAL")
        lo, hi = int.from_bytes(start, "big"), int.from_bytes(end, "big")
        if not ed.delete_reservation(lo, hi - lo):
            ed.delete_reservation(lo, align_up(hi - lo, machine.page_size))
    if initrd is not None:
        ed.set_u64("/chosen", "linux,initrd-start", initrd[0])
        ed.set_u64("/chosen", "linux,initrd-end", initrd[0] + initrd[1])
        ed.add_reservation(*initrd)
    else:
        ed.delete("/chosen", "linux,initrd-start")
        ed.delete("/chosen", "linux,initrd-end")
    if elfcorehdr is not None:
        ed.set_reg("/chosen", "linux,elfcorehdr", [elfcorehdr])
        ed.add_reservation(*elfcorehdr)
        ed.set_reg("/chosen", "linux,usable-memory-range", [(r.start, r.size) for r in usable])
    if machine.config_enabled("CONFIG_KEXEC_HANDOVER") is not False:
        ed.delete("/chosen", "linux,kho-fdt")
        ed.delete("/chosen", "linux,kho-scratch")
    if cmdline is None:
        ed.delete("/chosen", "bootargs")
    else:
        ed.set_string("/chosen", "bootargs", cmdline)
    ed.delete("/chosen", "kaslr-seed")
    if machine.rng_ready is not False:
        ed.set_u64("/chosen", "kaslr-seed", 0)
        ed.set("/chosen", "rng-seed", bytes(RNG_SEED_SIZE))
    ed.set("/chosen", "linux,booted-from-kexec", b"")
    ima = ed.get("/chosen", "linux,ima-kexec-buffer")
    if ima is not None:
        ed.delete("/chosen", "linux,ima-kexec-buffer")
        if len(ima) == 16:
            ed.delete_reservation(*struct.unpack(">QQ", ima))
    return ed.blob()


def plan_file(layer: Arm64Image, data: bytes, *, machine: Machine, crash: bool, initrd: bytes | None,
              cmdline: str | None) -> LoadPlan:
    if not layer.image_size:
        raise PlacementError("the Image header's image_size is 0 (a kernel before 3.17); kexec_file_load "
                             "refuses it", errno="EINVAL")
    if layer.endianness == "big":
        raise PlacementError("the Image is big-endian; a little-endian kernel loads it only on CPUs with "
                             "mixed-endian support", errno="EINVAL")
    if layer.page_size and machine.page_size and layer.page_size != machine.page_size:
        notes = [f"the Image wants {layer.page_size}-byte pages and this kernel runs with "
                 f"{machine.page_size}; the load is refused if the CPU lacks that granule"]
    else:
        notes = []
    beh = KernelBehaviour.of(machine)
    if beh.note("arm64"):
        notes.append(beh.note("arm64"))
    walks = [crash_walk(machine)] if crash else normal_walks(machine, file_mode=True, rev_walk=True)
    placer = Placer(page_size=machine.page_size, exact_top_down=beh.exact_top_down)
    if not crash and machine.kho_active:
        n = 16 * len(machine.kho_scratch)
        place(placer, KexecBuf("kho-scratch", n, n, buf_align=SZ_64K, top_down=True), walks)
    kernel = KexecBuf("kernel", bufsz=len(data), memsz=layer.image_size + layer.text_offset,
                      buf_align=MIN_KIMG_ALIGN, buf_min=0, top_down=False, buffer=data)
    last_error: PlacementError | None = None
    while True:
        try:
            kseg = place(placer, kernel, walks)
        except PlacementError as e:
            raise (last_error or e)
        try:
            _other_segments(placer, kseg, machine, beh, crash, initrd, cmdline, walks, notes)
            break
        except PlacementError as e:
            last_error = e
            while placer.segments[-1] is not kseg:
                placer.remove_last()
            placer.remove_last()
            kernel = KexecBuf(kernel.role, kernel.bufsz, kernel.memsz, kernel.buf_align,
                              buf_min=kseg.mem + kseg.memsz, top_down=False, buffer=kernel.buffer)
    segments = list(placer.segments)
    i = segments.index(kseg)
    moved = Segment("kernel", kseg.mem + layer.text_offset, kseg.memsz - layer.text_offset, kseg.bufsz,
                    kseg.buffer)
    segments[i] = moved
    return LoadPlan(target="linux-file", crash=crash, entry=moved.mem, cmdline=cmdline or "",
                    segments=tuple(segments), arch="arm64", machine=machine, notes=tuple(notes))


def _other_segments(placer: Placer, kseg: Segment, machine: Machine, beh: KernelBehaviour, crash: bool,
                    initrd: bytes | None, cmdline: str | None, walks: list, notes: list[str]) -> None:
    """machine_kexec_file.c ``load_other_segments``: elfcorehdr, initrd and DTB above the kernel."""
    buf_min = kseg.mem + kseg.memsz
    elf = iseg = None
    if crash:
        nr = _memblock_ranges_minus_crash(machine)
        bufsz, memsz = elfcorehdr_size(machine, nr, beh)
        elf = place(placer, KexecBuf("elfcorehdr", bufsz, memsz, buf_align=SZ_64K, buf_min=buf_min,
                                     top_down=True), walks)
    if initrd is not None:
        iseg = place(placer, KexecBuf("initrd", len(initrd), len(initrd), buf_align=0, buf_min=buf_min,
                                      buf_max=align_down(kseg.mem, GiB) + 32 * GiB, top_down=False,
                                      buffer=initrd), walks)
    size = dtb_size(machine, cmdline)
    if machine.fdt is not None:
        try:
            size = len(kexec_file_dtb(machine.fdt, machine=machine, cmdline=cmdline,
                                      initrd=None if iseg is None else (iseg.mem, len(initrd)),
                                      elfcorehdr=None if elf is None else (elf.mem, elf.bufsz),
                                      usable=_usable(machine) if crash else ()))
        except FormatError as e:   # libfdt refused an edit: the size is estimated, as without the DTB
            notes.append(f"the boot DTB could not be edited as the kernel edits it ({e}); its size is estimated")
    place(placer, KexecBuf("dtb", size, size, buf_align=MIN_KIMG_ALIGN, buf_min=buf_min, top_down=True), walks)


def _usable(machine: Machine) -> tuple[Range, ...]:
    """``linux,usable-memory-range``: crashk_res, then crashk_low_res when there is one."""
    return tuple(r for r in (machine.crashk_res, machine.crashk_low_res) if r is not None)


def _memblock_ranges_minus_crash(machine: Machine) -> int:
    """arm64 prepare_elf_headers: for_each_mem_range (memblock.memory) minus crashk_res/crashk_low_res."""
    from ..machine.ranges import subtract

    ram = [r.range for r in machine.system_ram()]
    return len(subtract(ram, list(machine.crash_regions())))


__all__ = ["plan_file", "dtb_size", "kexec_file_dtb", "PAGE_SIZE"]
