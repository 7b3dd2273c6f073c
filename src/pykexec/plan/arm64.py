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

The DTB is the running kernel's own (``initial_boot_params``) with /chosen
rewritten, then ``fdt_pack``-ed; its size is estimated from the packed size
of /sys/firmware/fdt plus the properties drivers/of/kexec.c adds.
"""

from __future__ import annotations

from ..errors import PlacementError
from ..formats.arm64_image import Arm64Image
from ..machine.model import Machine
from ..machine.ranges import GiB, PAGE_SIZE, align_down
from .common import crash_walk, normal_walks, place
from .kexec_buf import KexecBuf, Placer, Segment
from .linux import KernelBehaviour, elfcorehdr_size
from .loadplan import LoadPlan

MIN_KIMG_ALIGN = 2 << 20
SZ_64K = 64 << 10
DEFAULT_DTB_SIZE = 0x2000
# bootargs, linux,initrd-start/-end, kaslr-seed, rng-seed (128 bytes) and for crash
# linux,elfcorehdr and linux,usable-memory-range: a 12-byte FDT_PROP header, the value
# and a possibly new name in the strings block each.
DTB_PROPERTIES_ESTIMATE = 7 * 12 + 8 + 8 + 8 + 128 + 16 + 32 + 120


def dtb_size(machine: Machine, cmdline: str | None) -> int:
    base = machine.fdt_size or DEFAULT_DTB_SIZE
    return base + len((cmdline or "").encode()) + 1 + DTB_PROPERTIES_ESTIMATE


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
            _other_segments(placer, kseg, machine, beh, crash, initrd, cmdline, walks)
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
                    initrd: bytes | None, cmdline: str | None, walks: list) -> None:
    buf_min = kseg.mem + kseg.memsz
    if crash:
        nr = _memblock_ranges_minus_crash(machine)
        bufsz, memsz = elfcorehdr_size(machine, nr, beh)
        place(placer, KexecBuf("elfcorehdr", bufsz, memsz, buf_align=SZ_64K, buf_min=buf_min, top_down=True),
              walks)
    if initrd is not None:
        place(placer, KexecBuf("initrd", len(initrd), len(initrd), buf_align=0, buf_min=buf_min,
                               buf_max=align_down(kseg.mem, GiB) + 32 * GiB, top_down=False, buffer=initrd),
              walks)
    size = dtb_size(machine, cmdline)
    place(placer, KexecBuf("dtb", size, size, buf_align=MIN_KIMG_ALIGN, buf_min=buf_min, top_down=True), walks)


def _memblock_ranges_minus_crash(machine: Machine) -> int:
    """arm64 prepare_elf_headers: for_each_mem_range (memblock.memory) minus crashk_res/crashk_low_res."""
    from ..machine.ranges import subtract

    ram = [r.range for r in machine.system_ram()]
    return len(subtract(ram, list(machine.crash_regions())))


__all__ = ["plan_file", "dtb_size", "PAGE_SIZE"]
