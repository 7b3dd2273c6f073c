"""The machine a load is planned for: memory, crash region, KHO scratch and kexec state.

A :class:`Machine` is plain data.  :func:`pykexec.machine.snapshot` fills one
from the running host, :mod:`pykexec.machine.description` from a JSON file or
an iomem dump, and tests build them by hand.  Every field that could not be
learnt is ``None`` and the reason is in ``unreadable``.

Which memory the kernel's hole finder walks (kernel/kexec_file.c):

* ``walk_system_ram_res`` / ``walk_system_ram_res_rev`` (kernel/resource.c)
  visit every resource flagged IORESOURCE_SYSTEM_RAM|IORESOURCE_BUSY in tree
  order and resume after each match's end, so a "System RAM" nested in
  another is covered by its parent: what is walked is the outermost "System
  RAM" entries.  ``locate_mem_hole_callback`` then skips
  IORESOURCE_SYSRAM_DRIVER_MANAGED ones, which add_memory_driver_managed()
  names "System RAM ($DRIVER)" ("System RAM (kmem)", "System RAM
  (virtio_mem)").
* Under Xen (``memory_source`` "xen"), ``memory`` is the machine map Xen
  gives dom0 (``XENMEM_machine_memory_map``), in machine addresses, and the
  ``xen_*`` fields are Xen's ``KEXEC_CMD_kexec_get_range`` ranges: the crash
  area (``MA_CRASH``), Xen's own image (``MA_XEN``), one crash-note area per
  physical CPU (``MA_CPU``) and Xen's vmcoreinfo (``MA_VMCOREINFO``).
* Architectures with CONFIG_ARCH_KEEP_MEMBLOCK (arm64, loongarch, powerpc,
  ...) walk memblock's free ranges instead (``kexec_walk_memblock``):
  memblock.memory minus memblock.reserved.  From user space that is
  /sys/kernel/debug/memblock/{memory,reserved} when debugfs is readable, and
  otherwise "System RAM" minus its children, because arm64 publishes each
  memblock.reserved region as a nested "reserved" resource
  (arch/arm64/kernel/setup.c, request_standard_resources).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .ranges import PAGE_SIZE, Range, TypedRange, merge, subtract

#: What every architecture is called here, whatever names it: ``uname -m``, Debian's
#: architecture, the kernel's ARCH, an ELF e_machine or PE machine name, an image header.
#: Endianness is not part of the name (ppc64 and ppc64le are one family).
ARCH_ALIASES = {"aarch64": "arm64", "arm64": "arm64",
                "amd64": "x86_64", "x86-64": "x86_64", "x64": "x86_64",
                "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86",
                "armhf": "arm", "armel": "arm", "armv7l": "arm", "armv6l": "arm", "armv8l": "arm",
                "riscv": "riscv64", "loongarch": "loongarch64",
                "powerpc": "ppc64", "powerpc64": "ppc64", "ppc64le": "ppc64", "ppc64el": "ppc64",
                "s390": "s390x"}
#: CONFIG_ARCH_KEEP_MEMBLOCK, by the names above
#: the arm64 translation granules, the page sizes an arm64 kernel may run with
ARM64_GRANULES = (4096, 16384, 65536)
ARCH_KEEP_MEMBLOCK = frozenset({"arm64", "arm", "loongarch64", "ppc64", "mips", "riscv64"})
#: a machine of the key's architecture also boots images of these (x86_64: the 32-bit entry)
ARCH_RUNS = {"x86_64": frozenset({"x86_64", "x86"})}


def normalize_arch(name: str | None) -> str | None:
    """The one name of an architecture (see :data:`ARCH_ALIASES`); None stays None."""
    if name is None:
        return None
    return ARCH_ALIASES.get(name.lower(), name.lower())


def runs_on(image_arch: str | None, machine_arch: str | None) -> bool:
    """Whether an image for ``image_arch`` can boot on a ``machine_arch`` machine (unknown: yes)."""
    image, machine = normalize_arch(image_arch), normalize_arch(machine_arch)
    if image is None or machine is None:
        return True
    return image in ARCH_RUNS.get(machine, frozenset({machine}))


def foreign(image_format: str, image_arch: str | None, machine_arch: str | None) -> str | None:
    """Why an image cannot boot on the machine (None when it may): the one sentence plan and load give."""
    if runs_on(image_arch, machine_arch):
        return None
    return f"the image ({image_format}) is for {image_arch}, but this machine is {machine_arch}: it cannot boot here"


@dataclass(frozen=True)
class Machine:
    """A host as far as kexec placement is concerned."""

    arch: str | None = "x86_64"
    page_size: int = PAGE_SIZE
    memory: tuple[TypedRange, ...] = ()
    memory_source: str = "description"
    crashk_res: Range | None = None
    crashk_low_res: Range | None = None
    kho_active: bool | None = False
    kho_scratch: tuple[Range, ...] = ()
    memblock_free: tuple[Range, ...] | None = None
    kernel_release: str | None = None
    lockdown: str | None = None
    kexec_loaded: bool | None = None
    kexec_crash_loaded: bool | None = None
    kexec_crash_size: int | None = None
    hypervisor: str | None = None
    xen_dom0: bool | None = None
    xen_crash_area: Range | None = None
    xen_image: Range | None = None
    xen_cpu_notes: tuple[Range, ...] = ()
    xen_vmcoreinfo: Range | None = None
    possible_cpus: int | None = None
    mem_total: int | None = None
    efi: bool | None = None
    efi_runtime_map_entries: int | None = None
    efi_memdesc_size: int | None = None
    fdt_size: int | None = None  # the boot DTB's size once packed (fdt_pack)
    # the boot DTB itself (/sys/firmware/fdt, packed): the kernel's kexec_file loader on arm64
    # edits a copy of it, so its exact size follows from it (drivers/of/kexec.c)
    fdt: bytes | None = dataclasses.field(default=None, repr=False)
    # whether the kernel's RNG is initialised (getrandom(GRND_NONBLOCK) answers): only then does
    # the kexec_file DTB get a kaslr-seed and an rng-seed (of_kexec_alloc_and_setup_fdt)
    rng_ready: bool | None = None
    x86_5level: bool | None = None
    # arm64: the page sizes (granules) the CPU supports, from ID_AA64MMFR0_EL1.  Only a description
    # gives them: Linux hides the register's TGran fields from user space (they read as absent).
    cpu_page_sizes: tuple[int, ...] | None = None
    kernel_config: tuple[tuple[str, str], ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    # -- derived views -------------------------------------------------------------

    @property
    def under_xen(self) -> bool:
        """Xen's dom0, where kexec belongs to the hypervisor (a guest known not to be dom0 is not)."""
        return self.hypervisor == "xen" and self.xen_dom0 is not False

    def config(self, name: str, default: str | None = None) -> str | None:
        """A CONFIG_ option of the running kernel, as its config file spells the value."""
        return next((v for k, v in self.kernel_config if k == name), default)

    def config_enabled(self, name: str) -> bool | None:
        """True/False when the config is known, None when no config was read."""
        if not self.kernel_config:
            return None
        return self.config(name) in ("y", "m")

    def _memo(self, name: str, compute):
        # Machine is frozen; derived views are cached in the instance dict, outside the fields.
        cache = self.__dict__.setdefault("_views", {})
        if name not in cache:
            cache[name] = compute()
        return cache[name]

    def system_ram(self) -> tuple[TypedRange, ...]:
        """The outermost "System RAM" resources, in address order (driver-managed included)."""
        return self._memo("system_ram", self._system_ram)

    def _system_ram(self) -> tuple[TypedRange, ...]:
        out: list[TypedRange] = []
        ram_depth = -1
        for r in self.memory:
            if ram_depth >= 0 and r.depth > ram_depth:
                continue  # inside a System RAM already taken
            ram_depth = -1
            kind = r.type
            if kind == "System RAM" or kind.startswith("System RAM ("):
                out.append(r)
                ram_depth = r.depth
        out.sort(key=lambda r: r.start)
        return tuple(out)

    def walkable_ram(self) -> tuple[Range, ...]:
        """What ``walk_system_ram_res`` hands ``locate_mem_hole_callback`` and it accepts."""
        return self._memo("walkable_ram", lambda: tuple(
            Range(r.start, r.size) for r in self.system_ram() if r.type == "System RAM" or not r.driver_managed))

    def memblock_free_ranges(self) -> tuple[Range, ...]:
        """memblock.memory minus memblock.reserved, or the iomem approximation of it."""
        if self.memblock_free is not None:
            return self.memblock_free
        return self._memo("memblock_free", self._memblock_free)

    def _memblock_free(self) -> tuple[Range, ...]:
        ram: list[Range] = []
        children: list[Range] = []
        ram_depth: int | None = None
        for r in self.memory:
            if ram_depth is not None and r.depth > ram_depth:
                children.append(r.range)
                continue
            ram_depth = None
            if r.is_system_ram:
                ram_depth = r.depth
                if not r.driver_managed:
                    ram.append(r.range)
        return tuple(subtract(ram, children))

    def crash_regions(self) -> tuple[Range, ...]:
        return tuple(r for r in (self.crashk_low_res, self.crashk_res) if r is not None)

    def totalram(self) -> int:
        """Bytes the kernel counts in totalram_pages(): MemTotal when known, else all System RAM."""
        if self.mem_total is not None:
            return self.mem_total
        return sum(r.size for r in merge(self.walkable_ram()))

    def with_changes(self, **changes) -> "Machine":
        return dataclasses.replace(self, **changes)


def crash_from_iomem(memory: tuple[TypedRange, ...]) -> tuple[Range | None, Range | None]:
    """(crashk_res, crashk_low_res) from the "Crash kernel" entries.

    kernel/crash_reserve.c names both resources "Crash kernel".  With two, the
    lower is crashk_low_res (crashkernel=X,low, or the automatic low part of
    crashkernel=X,high); crashk_res is the other.  With one, it is crashk_res.
    """
    crash = sorted(r.range for r in memory if r.type == "Crash kernel" and r.size > 1)
    if not crash:
        return None, None
    if len(crash) == 1:
        return crash[0], None
    return crash[-1], crash[0]
