"""The documented Python API: the same operations as the CLI, returning data.

    >>> import pykexec
    >>> report = pykexec.inspect("/boot/vmlinuz")          # dict, as `inspect --json`
    >>> written = pykexec.extract("/boot/vmlinuz", "out")  # {"kernel": Path, ...}
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import formats
from .errors import LoadRefused, NotLoadable, PlacementError, UnknownFormat, UsageError
from .formats import pe
from .formats.arm64_image import Arm64Image
from .formats.bzimage import BzImage
from .images import extract, inspect, prepare_file, read_image  # noqa: F401  (part of this API)
from .limits import Limits
from .prepare import Prepared, join_initrds, prepare

if TYPE_CHECKING:  # the loader, syscalls, machine model, planner and trust store load only when used
    from . import loader
    from .backends.linux import Status, Syscalls
    from .machine.model import Machine
    from .plan.loadplan import LoadPlan

# Part of this API, but from the syscall backend: imported on first access, so that
# inspect and extract do not load ctypes and the loader.
BACKEND_NAMES = ("LinuxSyscalls", "Status", "Syscalls", "read_lockdown", "read_status")


def __getattr__(name: str):
    if name in BACKEND_NAMES:
        from .backends import linux
        return getattr(linux, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

PROC_CMDLINE = Path("/proc/cmdline")
DROPPED_ON_REUSE = ("BOOT_IMAGE=", "initrd=")


@dataclass(frozen=True)
class OpenedFile:
    """A file opened once, with the descriptor kept open for the kernel.

    ``data`` is the file read into memory, or for a mapped file (initrds,
    which the kernel reads itself through the descriptor) a read-only map
    that costs no memory until it is used.
    """

    path: Path
    fd: int
    size: int
    data: bytes | mmap.mmap

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            self.data.close()
        os.close(self.fd)


def open_file(path: str | Path, *, mapped: bool = False) -> OpenedFile:
    """Open a file once and read (or map) it; the same descriptor can go to the kernel."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: not a regular file")
        if mapped and st.st_size:
            data = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        elif mapped:
            data = b""
        else:
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
    except BaseException:
        os.close(fd)
        raise
    return OpenedFile(Path(path), fd, st.st_size, data)


def addon_dir(image: str | Path) -> list[Path]:
    """Add-ons beside a UKI, in file-name order: ``<uki>.extra.d/*.addon.efi`` (systemd's layout)."""
    extra = Path(str(image) + ".extra.d")
    return sorted(extra.glob("*.addon.efi")) if extra.is_dir() else []


def reuse_cmdline(proc_cmdline: Path = PROC_CMDLINE) -> str:
    """The running kernel's command line without BOOT_IMAGE= and initrd= (kexec --reuse-cmdline)."""
    words = proc_cmdline.read_text().split()
    return " ".join(w for w in words if not w.startswith(DROPPED_ON_REUSE))


def compose_cmdline(image_cmdline: str | None, *, command_line: str | None = None,
                    append: str | None = None, reuse: bool = False,
                    proc_cmdline: Path = PROC_CMDLINE) -> str | None:
    """--command-line replaces, --reuse-cmdline takes the running one, --append adds."""
    if command_line is not None:
        base = command_line
    elif reuse:
        base = reuse_cmdline(proc_cmdline)
    else:
        base = image_cmdline
    joined = " ".join(x for x in (base, append) if x)
    return joined if joined or base is not None else None


@dataclass(frozen=True)
class LoadOptions:
    """The user's load request, as the CLI and the API take it."""

    image: str | Path
    initrds: tuple[str | Path, ...] = ()
    command_line: str | None = None
    append: str | None = None
    reuse_cmdline: bool = False
    profile: int | None = None
    addons: tuple[str | Path, ...] | None = None
    crash: bool = False
    mode: str = "auto"
    debug: bool = False
    require_signature: bool | None = None
    trust: tuple[str | Path, ...] = ()
    modules: tuple[str, ...] = ()
    checks: bool = True
    via_emulator: bool = False


@dataclass(frozen=True)
class LoadSummary:
    """What a load would hand the kernel, before any system call."""

    layers: tuple[str, ...]
    kernel_format: str
    kernel_size: int
    kernel_source: str
    initrd_size: int
    cmdline: str | None
    crash: bool
    signature: str | None = None


def load(opts: LoadOptions, *, dry_run: bool = False, syscalls: Syscalls | None = None,
         sysfs: Path = Path("/sys"), limits: Limits | None = None, machine: Machine | None = None,
         efivars: Path | None = None,
         ) -> tuple[LoadSummary, loader.LoadReport | None, LoadPlan | None]:
    """Prepare, plan and load an image; with ``dry_run``, stop before the system call.

    The plan is the planner's prediction for this machine (``machine``, or a
    snapshot of this host).  When the memory map is the kernel's own
    (/proc/iomem) and the planner knows the image, a plan the kernel would
    refuse stops the load before any system call.
    """
    from . import loader
    from .backends.linux import LinuxSyscalls, read_lockdown
    from .machine import snapshot
    from .trust.esl import EFIVARS
    from .trust.policy import check_load
    lockdown = read_lockdown(sysfs)
    if opts.mode == "user":
        loader.refuse_user_mode_under_lockdown(lockdown)
    image = open_file(opts.image)
    initrds: list[OpenedFile] = []
    addons: list[OpenedFile] = []
    try:  # appended one by one, so that a failure (or a signal) half-way closes what is open
        for p in opts.initrds:
            initrds.append(open_file(p, mapped=True))
        machine = machine or snapshot(sys=str(sysfs))
        refuse_oversized(initrds, machine)
        if formats.uki.probe(image.data):
            for p in addon_dir(opts.image) if opts.addons is None else opts.addons:
                addons.append(open_file(p))
        policy = check_load(
            image.data, image_name=str(opts.image),
            files=[(str(f.path), os.fstat(f.fd)) for f in (image, *initrds, *addons)],
            addons=[(str(f.path), f.data) for f in addons], initrds=[str(f.path) for f in initrds],
            require=opts.require_signature, trust_files=opts.trust, lockdown=lockdown,
            efivars=efivars or EFIVARS, cmdline_override=(opts.command_line is not None
                                               or opts.append is not None or opts.reuse_cmdline))
        prepared = _prepare_or_emulate(image.data, opts, tuple(f.data for f in addons),
                                       limits or Limits.from_env(), machine)
        req = _request(opts, image, initrds, prepared, machine)
        summary = LoadSummary(
            layers=tuple(x.format for x in prepared.layers), kernel_format=prepared.kernel_layer.format,
            kernel_size=len(prepared.kernel),
            kernel_source="original file" if req.kernel_fd is not None else "memfd (prepared)",
            initrd_size=len(req.initrd) if req.initrd is not None else
            sum(f.size for f in initrds), cmdline=req.cmdline, crash=opts.crash,
            signature=policy.summary)
        trusted_map = machine.memory_source == "iomem"
        predicted = (req.user_load().plan if opts.mode == "user" and req.user_load
                     else _plan(req, machine, [f.data for f in initrds], strict=trusted_map))
        if dry_run:
            return summary, None, predicted
        if predicted is not None and trusted_map:
            refuse_if_violated(predicted)
        with loader.LoadLock():
            report = loader.load(req, syscalls or LinuxSyscalls(), lockdown=lockdown)
        return summary, report, predicted
    finally:
        for f in (image, *initrds, *addons):
            f.close()


def refuse_oversized(files: list[OpenedFile], machine: Machine) -> None:
    """Refuse initrds the kernel would refuse, before reading them.

    sanity_check_segment_list (kernel/kexec_core.c) refuses any segment, and
    all of them together, larger than half of RAM (totalram_pages() / 2).
    """
    half = machine.totalram() // 2
    if not half or not files:
        return
    total = sum(f.size for f in files)
    if total > half:
        raise LoadRefused(f"the initrd is {total >> 20} MiB, but the kernel refuses segments larger "
                          f"than half of RAM ({half >> 20} MiB on this machine)")


def _prepare_or_emulate(data: bytes, opts: LoadOptions, addons: tuple[bytes, ...],
                        limits: Limits, machine: Machine) -> Prepared:
    """Unwrap statically; a PE image no parser understands runs its own EFI stub instead."""
    if not opts.via_emulator:
        try:
            return prepare(data, profile=opts.profile, addons=addons, limits=limits)
        except (NotLoadable, UnknownFormat) as e:
            if not pe.has_pe_header(data):
                raise
            import logging
            logging.getLogger(__name__).warning(
                "no parser unwraps this PE image (%s); running its EFI stub in the emulator", e)
    return prepare_via_emulator(data, arch=machine.arch, limits=limits)


def prepare_via_emulator(data: bytes, *, arch: str | None, limits: Limits = Limits()) -> Prepared:
    """What the image's own EFI stub hands the kernel, captured under emulated UEFI."""
    from . import efi
    cap = efi.emulate_for_load(data, initrd=None, cmdline=None, arch=arch)
    if cap.loadable is None:
        raise NotLoadable("pe", "the emulated EFI stub handed over a kernel that kexec_file_load "
                          "cannot take (see `pykexec emulate`)")
    kernel = prepare(cap.loadable, limits=limits)
    return replace(kernel, layers=(cap.layer(), *kernel.layers),
                   initrds=() if cap.initrd is None else (cap.initrd,),
                   cmdline=cap.cmdline, kernel_is_input=False)


def _plan(req: loader.LoadRequest, machine: Machine, initrds: list[bytes], *,
          strict: bool) -> LoadPlan | None:
    """The planner's prediction, or None when it has no planner for this image or machine.

    ``strict``: the memory map is the kernel's own, so a load the planner
    cannot place is refused; otherwise the prediction is only advice.
    """
    from .plan import plan as plan_load
    layer = req.prepared.kernel_layer
    if not isinstance(layer, (BzImage, Arm64Image)) or machine.arch not in (None, layer.arch):
        return None
    initrd = req.initrd if req.initrd is not None else (initrds[0] if initrds else None)
    target = "linux-user" if req.mode == "user" else "linux-file"
    try:
        return plan_load(req.prepared, machine=machine, target=target, crash=req.crash,
                         initrd=initrd, cmdline=req.cmdline or "")
    except PlacementError as e:
        if strict:
            raise LoadRefused(f"the load cannot fit: {e}") from e
        import logging
        logging.getLogger(__name__).info("no placement prediction: %s", e)
        return None


def refuse_if_violated(predicted: LoadPlan) -> None:
    """Stop before the system call when the receiver's rules would refuse the plan."""
    violations = predicted.validate()
    if violations:
        first = violations[0]
        where = "" if first.segment is None else f" (segment {first.segment}, {first.role})"
        raise LoadRefused(f"{predicted.target} would refuse this load with {first.errno}{where}: "
                          f"{first.message}")


def _request(opts: LoadOptions, image: OpenedFile, initrds: list[OpenedFile],
             prepared: Prepared, machine: Machine) -> loader.LoadRequest:
    from . import loader
    if not prepared.initrds and len(initrds) == 1:
        initrd, initrd_fd = None, initrds[0].fd
    else:
        initrd, initrd_fd = join_initrds((*prepared.initrds, *(f.data for f in initrds))), None
    cmdline = compose_cmdline(prepared.cmdline, command_line=opts.command_line,
                              append=opts.append, reuse=opts.reuse_cmdline)
    initrd_data = initrd if initrd_fd is None else initrds[0].data
    return loader.LoadRequest(
        prepared=prepared, kernel_fd=image.fd if prepared.kernel_is_input else None,
        initrd=initrd, initrd_fd=initrd_fd, cmdline=cmdline, crash=opts.crash,
        mode=opts.mode, debug=opts.debug,
        user_load=_user_builder(opts, prepared, machine, initrd_data, cmdline))


def _user_builder(opts: LoadOptions, prepared: Prepared, machine: Machine,
                  initrd: bytes | None, cmdline: str | None):
    """A deferred kexec_load build, or None where pykexec has no user-mode loader."""
    if machine.arch not in (None, "x86_64"):
        return None

    def build():
        from .boot import load_module
        from .boot.usermode import build_user_load
        return build_user_load(prepared, initrd=initrd, cmdline=cmdline, crash=opts.crash,
                               machine=machine, modules=tuple(load_module(m) for m in opts.modules),
                               checks=opts.checks, image_name=Path(opts.image).name)
    return build


def status(sysfs: Path = Path("/sys")) -> Status:
    """What is loaded now, from /sys/kernel."""
    from .backends.linux import read_status
    return read_status(sysfs)


def unload(*, crash: bool = False, syscalls: Syscalls | None = None, sysfs: Path = Path("/sys")) -> str:
    from . import loader
    from .backends.linux import LinuxSyscalls, read_lockdown
    with loader.LoadLock():
        return loader.unload(syscalls or LinuxSyscalls(), crash=crash, lockdown=read_lockdown(sysfs))


def execute(*, sync: bool = True, syscalls: Syscalls | None = None, sysfs: Path = Path("/sys")) -> None:
    from . import loader
    from .backends.linux import LinuxSyscalls, read_status
    loader.execute(syscalls or LinuxSyscalls(), loaded=read_status(sysfs).loaded, sync=sync)
