"""Snapshot the running host into a :class:`Machine`, unprivileged, saying what it could not read.

Every root is a parameter with the real default, so tests point them at fake
trees.  Sources, in the order they are tried for memory:

* ``/proc/iomem`` -- the resource tree with the crash region.  Without
  CAP_SYS_ADMIN every address reads as zero; that is detected and said.
* ``/sys/firmware/memmap/N/{start,end,type}`` (drivers/firmware/memmap.c) --
  the firmware map as booted, world-readable, but without the crash region,
  the kernel's own resources or hot-plugged memory.
* ``/sys/firmware/fdt`` -- the boot DTB (root only): memory nodes,
  /reserved-memory and /memreserve/.

State: ``/sys/kernel/kexec_loaded``, ``kexec_crash_loaded``,
``kexec_crash_size`` (kernel/ksysfs.c; the size of crashk_res only),
``/sys/kernel/security/lockdown`` (security/lockdown/lockdown.c prints the
modes with the active one in brackets), ``/proc/xen`` and
``/sys/hypervisor/type`` (Xen; ``/sys/hypervisor/uuid`` is the null handle in
dom0), ``/sys/devices/system/cpu/possible`` (sizes the
elfcorehdr, kernel/crash_core.c), ``/proc/meminfo`` MemTotal (totalram_pages,
the "half of RAM" limit of sanity_check_segment_list), and whether
``getrandom(GRND_NONBLOCK)`` answers (the RNG is ready: the arm64 kexec_file
DTB then carries seeds).

KHO (kernel/liveupdate/kexec_handover.c in 7.2): ``kho_init`` creates
``/sys/kernel/debug/kho/`` only when KHO is enabled (``kho=on``, or
CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT, and the scratch areas were reserved:
a failed reservation disables KHO however the command line asked), so the
directory is the authority; ``kho/out/scratch_phys`` and ``scratch_len``
print the scratch areas one ``0x...`` value a line, in ``kho_scratch[]``
order (kexec_handover_debugfs.c).  Nothing else exposes them: neither
/proc/iomem nor sysfs.  Without root (debugfs is 0700) the command line and
the configuration say whether KHO was asked for; the areas are then unknown,
and plans that need them say so.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import FormatError, MachineDescriptionError
from . import iomem as iomem_mod
from .model import ARCH_KEEP_MEMBLOCK, Machine, crash_from_iomem, normalize_arch
from .ranges import Range, TypedRange

#: Under Xen's dom0 the machine comes from the hypervisor: see
#: :mod:`pykexec.backends.xen.probe` (``XENMEM_machine_memory_map`` and
#: ``KEXEC_CMD_kexec_get_range``).  ``xen`` (a Hypercalls object) is injectable.

if TYPE_CHECKING:
    from .fdt import FdtMemory

log = logging.getLogger(__name__)

CONFIG_KEYS = ("CONFIG_KEXEC", "CONFIG_KEXEC_FILE", "CONFIG_KEXEC_SIG", "CONFIG_CRASH_DUMP",
               "CONFIG_CRASH_HOTPLUG", "CONFIG_MEMORY_HOTPLUG", "CONFIG_NR_CPUS_DEFAULT",
               "CONFIG_CRASH_MAX_MEMORY_RANGES", "CONFIG_IMA_KEXEC", "CONFIG_KEXEC_HANDOVER",
               "CONFIG_EFI", "CONFIG_X86_5LEVEL", "CONFIG_DMA_CMA", "CONFIG_OF_FLATTREE",
               "CONFIG_ARCH_KEEP_MEMBLOCK", "CONFIG_EFI_RUNTIME_MAP",
               "CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT", "CONFIG_LIVEUPDATE")
KHO_ON = {"on", "1", "y", "yes", "true"}


class _Reader:
    """Reads files, remembering which could not be read and why."""

    def __init__(self) -> None:
        self.unreadable: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def text(self, path: Path, *, what: str | None = None, quiet_missing: bool = False) -> str | None:
        raw = self.data(path, what=what, quiet_missing=quiet_missing)
        return None if raw is None else raw.decode(errors="replace")

    def data(self, path: Path, *, what: str | None = None, quiet_missing: bool = False) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not quiet_missing:
                self.unreadable.append((str(path), what or "absent"))
        except PermissionError:
            self.unreadable.append((str(path), "permission denied (needs root)"))
        except OSError as e:
            self.unreadable.append((str(path), e.strerror or str(e)))
        return None


def snapshot(*, proc: str | Path = "/proc", sys: str | Path = "/sys", boot: str | Path = "/boot",
             arch: str | None = None, page_size: int | None = None, xen=None,
             getrandom: Callable[[int, int], bytes] = os.getrandom) -> Machine:
    """Describe the running host.  Never raises for a file it cannot read; records it.

    In Xen's dom0 the memory map and the Xen ranges come from the hypercalls
    ``xen`` (default: ``/dev/xen/privcmd``), and dom0's own iomem is kept
    only when Xen cannot be asked."""
    proc, sys, boot = Path(proc), Path(sys), Path(boot)
    rd = _Reader()
    arch = normalize_arch(arch or os.uname().machine)
    page_size = page_size or _page_size()
    release = _strip(rd.text(proc / "sys/kernel/osrelease"))
    cmdline = rd.text(proc / "cmdline") or ""

    memory, source = _memory(rd, proc, sys)
    crashk_res, crashk_low_res = crash_from_iomem(memory) if source == "iomem" else (None, None)
    crash_size = _int(rd.text(sys / "kernel/kexec_crash_size", quiet_missing=True))
    if source != "iomem" and crash_size:
        rd.notes.append(f"a crash region of {crash_size:#x} bytes is reserved, but only /proc/iomem "
                        "(read as root) gives its address")
    if crashk_res is not None and crash_size is not None and crash_size != crashk_res.size:
        rd.notes.append(f"/sys/kernel/kexec_crash_size says {crash_size:#x} bytes but the high "
                        f"'Crash kernel' entry is {crashk_res.size:#x} bytes")

    fdt_blob = rd.data(sys / "firmware/fdt", quiet_missing=True)
    if fdt_blob is not None and not memory:
        memory, source = _memory_from_fdt(fdt_blob), "fdt"
    memblock = _memblock(rd, sys) if arch in ARCH_KEEP_MEMBLOCK else None

    hypervisor = _strip(rd.text(sys / "hypervisor/type", quiet_missing=True))
    if hypervisor is None and (proc / "xen").exists():
        hypervisor = "xen"
    xen_fields: dict = {}
    if hypervisor == "xen":
        xen_fields, xen_memory = _xen(rd, sys, xen)
        if xen_memory:
            memory, source = xen_memory, "xen"
            crashk_res = crashk_low_res = None

    config = _config(rd, proc, boot, release)
    kho_active, kho_scratch = _kho(rd, sys, cmdline, config)
    cpuinfo = rd.text(proc / "cpuinfo", quiet_missing=True) or ""
    la57 = bool(re.search(r"^flags\s*:.*\bla57\b", cpuinfo, re.M)) if arch == "x86_64" else None
    efi = (sys / "firmware/efi").exists()
    runtime_map = sys / "firmware/efi/runtime-map"
    efi_entries = (len([p for p in runtime_map.iterdir() if p.name.isdigit()])
                   if runtime_map.is_dir() else (0 if efi else None))
    memdesc = _efi_memdesc_size(rd, sys) if efi and arch == "x86_64" else None

    return Machine(
        arch=arch, page_size=page_size, memory=memory, memory_source=source,
        crashk_res=crashk_res, crashk_low_res=crashk_low_res,
        kho_active=kho_active, kho_scratch=kho_scratch, memblock_free=memblock,
        kernel_release=release, lockdown=_lockdown(rd, sys),
        kexec_loaded=_bool(rd.text(sys / "kernel/kexec_loaded", what="absent (kernel without CONFIG_KEXEC_CORE)")),
        kexec_crash_loaded=_bool(rd.text(sys / "kernel/kexec_crash_loaded", quiet_missing=True)),
        kexec_crash_size=crash_size, hypervisor=hypervisor, **xen_fields,
        possible_cpus=_cpu_count(rd.text(sys / "devices/system/cpu/possible")),
        mem_total=_meminfo(rd.text(proc / "meminfo")),
        efi=efi, efi_runtime_map_entries=efi_entries, efi_memdesc_size=memdesc,
        fdt_size=_fdt().packed_size(fdt_blob) if fdt_blob else None, fdt=_packed_fdt(rd, fdt_blob),
        rng_ready=_rng_ready(getrandom),
        x86_5level=(la57 and config.get("CONFIG_X86_5LEVEL") == "y") if la57 is not None and config else la57,
        kernel_config=tuple(sorted(config.items())),
        unreadable=tuple(rd.unreadable), notes=tuple(rd.notes))


def _xen(rd: _Reader, sys: Path, calls) -> tuple[dict, tuple[TypedRange, ...]]:
    """dom0 or not, and in dom0 what Xen says (Machine fields, machine memory map)."""
    from ..backends.xen import probe
    from ..errors import SyscallError
    dom0 = probe.is_dom0(sys)
    fields: dict = {"xen_dom0": dom0}
    if dom0 is False:
        return fields, ()
    try:
        if calls is None:
            from ..backends.xen.hypercalls import PrivcmdHypercalls
            calls = PrivcmdHypercalls()
        view = probe.read_view(calls)
    except SyscallError as e:
        rd.unreadable.append(("xen", e.advice or str(e)))
        rd.unreadable.append(("xen crash area", "only the KEXEC_CMD_kexec_get_range hypercall gives it; "
                              "describe it with --machine"))
        return fields, ()
    rd.unreadable.extend(view.unreadable)
    fields.update(xen_crash_area=view.crash_area, xen_image=view.xen_image, xen_cpu_notes=view.cpu_notes,
                  xen_vmcoreinfo=view.vmcoreinfo)
    return fields, view.memory


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4096


def _strip(text: str | None) -> str | None:
    return text.strip() if text is not None else None


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip(), 0) if text is not None else None
    except ValueError:
        return None


def _bool(text: str | None) -> bool | None:
    value = _int(text)
    return None if value is None else bool(value)


def _memory(rd: _Reader, proc: Path, sys: Path) -> tuple[tuple[TypedRange, ...], str]:
    text = rd.text(proc / "iomem")
    if text is not None:
        try:
            parsed = iomem_mod.parse(text, source=str(proc / "iomem"))
        except MachineDescriptionError as e:
            rd.unreadable.append((str(proc / "iomem"), f"malformed: {e}"))
            parsed = None
        if parsed is not None and not parsed.addresses_hidden and parsed.resources:
            return parsed.resources, "iomem"
        if parsed is not None and parsed.addresses_hidden:
            rd.unreadable.append((str(proc / "iomem"), "addresses read as zero without CAP_SYS_ADMIN "
                                  "(run as root for the crash region and nested resources)"))
    memmap = _firmware_memmap(rd, sys / "firmware/memmap")
    if memmap:
        return memmap, "memmap"
    return (), "none"


def _firmware_memmap(rd: _Reader, root: Path) -> tuple[TypedRange, ...]:
    if not root.is_dir():
        rd.unreadable.append((str(root), "absent (kernel without CONFIG_FIRMWARE_MEMMAP, or not x86)"))
        return ()
    out = []
    for entry in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        start, end = _int(rd.text(entry / "start")), _int(rd.text(entry / "end"))
        kind = _strip(rd.text(entry / "type"))
        if start is None or end is None or kind is None or end < start:
            continue
        out.append(TypedRange(start, end - start + 1, kind, 0))
    return tuple(sorted(out))


def _fdt():
    """The DTB reader (and libfdt), imported only where firmware hands over a device tree."""
    from . import fdt
    return fdt


def _packed_fdt(rd: _Reader, blob: bytes | None) -> bytes | None:
    """The boot DTB packed (QEMU pads its DTB to 1 MiB; fdt_pack leaves the ~8 KiB that matter)."""
    if not blob:
        return None
    try:
        return _fdt().FdtEditor(blob).blob()
    except FormatError as e:
        rd.notes.append(f"/sys/firmware/fdt is not a usable device tree: {e}")
        return None


def _rng_ready(getrandom: Callable[[int, int], bytes]) -> bool | None:
    """Whether the kernel's RNG is initialised: getrandom(GRND_NONBLOCK) answers instead of EAGAIN
    (crng_ready(), which rng_is_initialized() reports)."""
    try:
        getrandom(1, os.GRND_NONBLOCK)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _memory_from_fdt(blob: bytes) -> tuple[TypedRange, ...]:
    parsed = _fdt().parse(blob)
    return memory_from_fdt(parsed)


def memory_from_fdt(parsed: FdtMemory) -> tuple[TypedRange, ...]:
    """Memory nodes as "System RAM", reservations nested inside them as "reserved"."""
    ram = [TypedRange(r.start, r.size, "System RAM", 0) for r in parsed.memory]
    holes = [r for _, r in parsed.reserved_memory] + list(parsed.memreserve)
    out: list[TypedRange] = []
    for parent in ram:
        out.append(parent)
        inside = sorted(h for h in holes if h.intersect(parent))
        for h in inside:
            part = h.intersect(parent)
            out.append(TypedRange(part.start, part.size, "reserved", 1))
    for h in holes:
        if not any(h.intersect(p) for p in ram):
            out.append(TypedRange(h.start, h.size, "reserved", 0))
    return tuple(sorted(out, key=lambda r: (r.start, r.depth)))


def kernel_config(*, proc: str | Path = "/proc", boot: str | Path = "/boot") -> dict[str, str]:
    """The running kernel's selected ``CONFIG_*`` values (empty when no configuration is readable)."""
    proc, boot = Path(proc), Path(boot)
    rd = _Reader()
    return _config(rd, proc, boot, _strip(rd.text(proc / "sys/kernel/osrelease")))


def kho_state(*, proc: str | Path = "/proc", sys: str | Path = "/sys",
              boot: str | Path = "/boot") -> tuple[bool | None, tuple[Range, ...]]:
    """Whether KHO is on and its scratch areas, without the rest of a snapshot (for ``status``)."""
    proc, sys, boot = Path(proc), Path(sys), Path(boot)
    rd = _Reader()
    cmdline = rd.text(proc / "cmdline") or ""
    return _kho(rd, sys, cmdline, _config(rd, proc, boot, _strip(rd.text(proc / "sys/kernel/osrelease"))))


def _kho(rd: _Reader, sys: Path, cmdline: str, config: dict[str, str]) -> tuple[bool | None, tuple[Range, ...]]:
    """Whether KHO is on, and its scratch areas: debugfs when it can be read, else what was asked for."""
    debug = sys / "kernel/debug"
    out = debug / "kho/out"
    phys = rd.text(out / "scratch_phys", quiet_missing=True)
    lens = rd.text(out / "scratch_len", quiet_missing=True)
    if phys is not None and lens is not None:
        starts = [int(x, 0) for x in phys.split()]
        sizes = [int(x, 0) for x in lens.split()]
        return True, tuple(Range(s, n) for s, n in zip(starts, sizes) if n)
    try:
        listing = os.listdir(debug)
    except OSError:
        listing = []
    if listing:  # debugfs is mounted and readable: kho/ is there exactly when KHO is enabled
        if "kho" not in listing:
            return False, ()
        rd.unreadable.append((str(out / "scratch_phys"), "absent, though KHO is enabled"))
        return True, ()
    words = dict(w.split("=", 1) for w in cmdline.split() if "=" in w)
    asked = words.get("kho", "").lower()
    if config.get("CONFIG_KEXEC_HANDOVER") != "y" and config:
        return False, ()
    on = asked in KHO_ON if asked else config.get("CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT") == "y"
    if on:
        rd.unreadable.append((str(out / "scratch_phys"), "debugfs unreadable (needs root, and debugfs mounted)"))
    return on, ()


def _memblock(rd: _Reader, sys: Path) -> tuple[Range, ...] | None:
    base = sys / "kernel/debug/memblock"
    mem = rd.text(base / "memory", quiet_missing=True)
    res = rd.text(base / "reserved", quiet_missing=True)
    if mem is None or res is None:
        return None
    from .ranges import subtract

    pattern = re.compile(r"0x([0-9a-fA-F]+)\.\.0x([0-9a-fA-F]+)")
    memory = [Range.inclusive(int(a, 16), int(b, 16)) for a, b in pattern.findall(mem)]
    reserved = [Range.inclusive(int(a, 16), int(b, 16)) for a, b in pattern.findall(res)]
    return tuple(subtract(memory, reserved))


def _lockdown(rd: _Reader, sys: Path) -> str | None:
    text = rd.text(sys / "kernel/security/lockdown",
                   what="absent (securityfs not mounted, or no lockdown LSM)")
    if text is None:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else None


def _cpu_count(text: str | None) -> int | None:
    if not text or not text.strip():
        return None
    count = 0
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) - int(lo) + 1) if hi else 1
    return count


def _meminfo(text: str | None) -> int | None:
    m = re.search(r"^MemTotal:\s+(\d+) kB", text or "", re.M)
    return int(m.group(1)) * 1024 if m else None


def _config(rd: _Reader, proc: Path, boot: Path, release: str | None) -> dict[str, str]:
    text = None
    if release:
        text = rd.text(boot / f"config-{release}", quiet_missing=True)
    if text is None:
        try:
            packed = (proc / "config.gz").read_bytes()
            import gzip  # only for a kernel that has /proc/config.gz
            text = gzip.decompress(packed).decode(errors="replace")
        except (OSError, EOFError):
            text = None
    if text is None:
        rd.unreadable.append(("kernel config", f"neither {boot}/config-{release} nor {proc}/config.gz; "
                              "config-dependent sizes use defaults"))
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in CONFIG_KEYS:
            out[key] = value.strip('"')
    return out


def _efi_memdesc_size(rd: _Reader, sys: Path) -> int | None:
    # boot/ builds on machine/, so the zero-page layout is imported here, not at the top.
    from ..boot.bootparam import BOOT_PARAMS
    data = rd.data(sys / "kernel/boot_params/data", quiet_missing=True)
    if data is None:
        return None
    try:
        return BOOT_PARAMS.get(data, "efi_memdesc_size") or None
    except FormatError:     # a short boot_params: no efi_info to read
        return None
