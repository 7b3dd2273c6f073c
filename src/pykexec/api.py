"""The documented Python API: the same operations as the CLI, returning data.

    >>> import pykexec
    >>> report = pykexec.inspect("/boot/vmlinuz")          # dict, as `inspect --json`
    >>> written = pykexec.extract("/boot/vmlinuz", "out")  # {"kernel": Path, ...}
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import formats
from .backends import LoadReport
from .errors import FormatError, LoadRefused, NotLoadable, PlacementError, SyscallError, UnknownFormat, UsageError
from .formats import pe
from .limits import Limits
from .machine.model import Machine, foreign
from .plan.loadplan import FileLoad, LoadPlan
from .formats.prepare import Prepared, join_initrds, prepare
from .receivers import (KHO_MODES, KHO_USER_MODE, MODES, OWNERS, RECEIVERS, TABLE, Entry, Owner, backend_for,
                        control_for, entry_offers, find, owner_of, served)

if TYPE_CHECKING:  # the syscalls load only when used
    from .backends.linux.syscalls import Status, Syscalls

log = logging.getLogger(__name__)

# Part of this API, but from the syscall backend and from pykexec.images: imported on
# first access, so that inspect and extract do not load the backend, nor load the
# output writers.
BACKEND_NAMES = ("LinuxSyscalls", "Status", "Syscalls", "read_lockdown", "read_status")
IMAGE_NAMES = ("extract", "inspect", "prepare_file", "read_image")


def __getattr__(name: str):
    if name in BACKEND_NAMES:
        from .backends.linux import syscalls
        return getattr(syscalls, name)
    if name in IMAGE_NAMES:
        from . import images
        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: test hook: a load the planner would refuse on this host's own memory map goes to the kernel
#: anyway (the prediction is then advice), so the VM tests can show that the kernel refuses it too
TEST_PAST_PLANNER = "PYKEXEC_TEST_PAST_PLANNER"

PROC_CMDLINE = Path("/proc/cmdline")
DROPPED_ON_REUSE = ("BOOT_IMAGE=", "initrd=")


@dataclass(frozen=True)
class OpenedFile:
    """A file opened once, with the descriptor kept open for the kernel.

    ``data`` is a view of the file mapped copy-on-write: nothing is read until
    a page is used, so a load that hands the kernel the descriptor reads only
    the headers it parses, and a user-mode load reads each page once, into the
    memory kexec_load copies from (writable, so ctypes can point at it).  The
    map goes with the last view of it: a plan that a dry run returns still
    views the files.
    """

    path: Path
    fd: int
    size: int
    data: bytes | memoryview

    def close(self) -> None:
        os.close(self.fd)


def open_file(path: str | Path) -> OpenedFile:
    """Open a file once and map it; the same descriptor can go to the kernel."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: not a regular file")
        data = _map(fd, st.st_size)
    except BaseException:
        os.close(fd)
        raise
    return OpenedFile(Path(path), fd, st.st_size, data)


def _map(fd: int, size: int) -> bytes | memoryview:
    """The file's bytes, mapped; read where the file system cannot map (or nothing to map)."""
    if not size:
        return b""
    try:
        return memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY))
    except OSError:
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()


def addon_dir(image: str | Path) -> list[Path]:
    """Add-ons beside a UKI, in file-name order: ``<uki>.extra.d/*.addon.efi`` (systemd's layout)."""
    extra = Path(str(image) + ".extra.d")
    return sorted(extra.glob("*.addon.efi")) if extra.is_dir() else []


def read_dtb(path: str | Path | None) -> bytes | None:
    """The bytes of a ``--dtb FILE``, read with a bound (an arm64 kernel takes at most 2 MiB)."""
    if path is None:
        return None
    from .machine.fdt import MAX_FDT_SIZE
    with open(path, "rb") as f:
        data = f.read(MAX_FDT_SIZE + 1)
    if len(data) > MAX_FDT_SIZE:
        raise UsageError(f"--dtb {path}: larger than {MAX_FDT_SIZE} bytes, the most an arm64 kernel "
                         "takes (booting.rst)")
    return data


def reuse_cmdline(proc_cmdline: Path = PROC_CMDLINE) -> str:
    """The running kernel's command line without BOOT_IMAGE= and initrd= (kexec --reuse-cmdline)."""
    words = proc_cmdline.read_text().split()
    return " ".join(w for w in words if not w.startswith(DROPPED_ON_REUSE))


def compose_cmdline(image_cmdline: str | None, *, command_line: str | None = None,
                    append: str | None = None, reuse: bool = False,
                    proc_cmdline: Path = PROC_CMDLINE) -> str | None:
    """--command-line replaces, --reuse-cmdline takes the running one, --append adds.

    --command-line excludes both others: it says what the whole line is.
    """
    if command_line is not None and (append is not None or reuse):
        raise UsageError("give --command-line alone: it replaces the whole command line, so "
                         "--append and --reuse-cmdline cannot apply")
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
    dtb: str | Path | None = None
    target: str | None = None
    #: an x86 bzImage's entry under kexec_load: 64, 32 or 16 (real mode); None: the image's first
    entry: int | None = None


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
         advice: Machine | None = None, efivars: Path | None = None, table: Sequence[Entry] = TABLE,
         ) -> tuple[LoadSummary, LoadReport | None, LoadPlan | None]:
    """Load an image; with ``dry_run``, stop before the system call.

    The steps: open the files once → check the signature policy → prepare
    (unwrap, or emulate the EFI stub) → choose the receivers (``opts.mode``,
    under Xen the hypervisor) → make each receiver's hand-off once (a
    :class:`FileLoad` with the planner's prediction, or a user-mode build) →
    validate it as the receiver will → execute it with the receiver's
    backend, falling back as kexec-tools' ``-a`` does.

    ``machine`` is this host (default: a snapshot of it).  ``advice`` is a
    description of a machine to predict for: its plan is shown and its
    refusals are warnings, but the load itself is this host's.  The plan
    returned is the hand-off's: exactly what the backend was (or, in a dry
    run, would have been) given.
    """
    from .backends.linux.policy import LoadLock, refuse_user_mode_under_lockdown
    from .backends.linux.syscalls import LinuxSyscalls, read_lockdown
    from .machine import snapshot
    lockdown = read_lockdown(sysfs)
    if opts.mode == "user":
        refuse_user_mode_under_lockdown(lockdown)
    if opts.entry is not None:
        refuse_user_mode_under_lockdown(lockdown, f"--entry {opts.entry}")
    with _Files(opts) as files:
        host = machine or snapshot(sys=str(sysfs))
        names = receivers_for(opts.mode, host, crash=opts.crash)
        refuse_oversized(files.initrds, host)
        policy = _check_policy(opts, files, lockdown, efivars)
        prepared = _prepare_or_emulate(files.image.data, opts, tuple(f.data for f in files.addons),
                                       limits or Limits.from_env(), host)
        _refuse_foreign(prepared, host)
        req = _request(opts, files, prepared, host, sysfs)
        names = _xen_receivers(_probed(names, req, table, lockdown), opts, host, syscalls,
                               probe=machine is None)
        names = _offering(opts.entry, names, req, table)
        handoffs = _Handoffs(req, table, advice)
        first = handoffs.get(names[0])
        summary = _summary(req, files, policy.summary)
        if dry_run:
            return summary, None, _plan_of(first)
        sys_ = syscalls or LinuxSyscalls()
        with LoadLock():
            report = _execute(names, handoffs, sys_, lockdown=lockdown, prepared=prepared)
        return summary, report, _plan_of(handoffs.last)


def _probed(names: tuple[str, ...], req: "Request", table: Sequence[Entry], lockdown: str | None) -> tuple[str, ...]:
    """``auto`` skips a receiver whose own probe refuses the image (bzImage64_probe's -ENOEXEC), as
    ``kexec -a`` falls back to kexec_load when kexec_file_load fails so; not under lockdown, where
    kexec_load is refused and the first receiver's reason is the one to give."""
    if len(names) < 2 or lockdown not in (None, "none"):
        return names
    keep = []
    for name in names[:-1]:
        entry = find(req.machine.arch, req.layer, name, table)
        why = entry.refusal(req.layer, req.machine) if entry is not None else None
        if why is None:
            keep.append(name)
        else:
            log.info("%s refuses this image (%s); trying %s", name, why, names[-1])
    return (*keep, names[-1])


def _offering(wanted: int | None, names: tuple[str, ...], req: "Request", table: Sequence[Entry]) -> tuple[str, ...]:
    """The receivers among ``names`` that offer the kernel entry ``wanted`` (kexec-tools'
    ``--entry-32bit`` and ``--real-mode`` send a load to kexec_load); all when none is asked for."""
    if wanted is None:
        return names
    keep = tuple(n for n in names if (e := find(req.machine.arch, req.layer, n, table)) and wanted in e.entries)
    if not keep:
        raise UsageError(f"--entry {wanted}: the receivers this load may use ({', '.join(names)}) choose a "
                         f"{req.layer.format}'s entry themselves; --entry is for {entry_offers(table)}")
    return keep


def _plan_of(handoff: Any) -> LoadPlan | None:
    """The plan a hand-off carries (a receiver with no backend yet hands over its plan alone)."""
    return handoff if isinstance(handoff, LoadPlan) else handoff.plan


def receivers_for(mode: str, machine: Machine, *, crash: bool = False) -> tuple[str, ...]:
    """The receivers ``mode`` tries, in order; under Xen, the hypervisor's kexec; with KHO
    active, kexec_file_load alone (a crash image never hands over, so crash loads keep every mode)."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if not machine.under_xen and machine.kho_active and not crash:
        if not KHO_MODES[mode]:
            raise LoadRefused(f"--mode {mode}: {KHO_USER_MODE}")
        return KHO_MODES[mode]
    owner = owner_of(machine)
    if not owner.modes[mode]:
        raise UsageError(f"--mode {mode}: {owner.no_mode}")
    return owner.modes[mode]


def _xen_receivers(names: tuple[str, ...], opts: LoadOptions, host: Machine, syscalls: Any, *,
                   probe: bool) -> tuple[str, ...]:
    """``opts.target`` alone when given; else ``names`` (``opts.mode``'s receivers), where under a
    Xen in lockdown the hypercall's classic types give way to the EFI ones (``xen-efi``), saying so.
    ``probe``: the host is this machine (not a description), so Xen can be asked."""
    if opts.target is not None:
        return (_explicit_target(opts.target, host),)
    if names == ("xen",) and probe:
        from .backends.xen.backend import hypercalls_from
        from .backends.xen.probe import xen_locked_down
        try:
            calls = hypercalls_from(syscalls)
        except SyscallError:   # no privcmd: the load itself says so
            return names
        if xen_locked_down(calls):
            log.warning("Xen is in lockdown (it refuses the classic kexec load types): loading with its "
                        "EFI load types, %s (--target xen-efi)",
                        "KEXEC_TYPE_CRASH_EFI" if opts.crash else "KEXEC_TYPE_DEFAULT_EFI")
            return ("xen-efi",)
    return names


def _explicit_target(target: str, host: Machine) -> str:
    if target not in RECEIVERS:
        raise UsageError(f"unknown target {target!r}; choose one of {', '.join(RECEIVERS)}")
    if target not in owner_of(host).targets:
        where = "Xen's dom0" if host.under_xen else "a Linux host without Xen"
        raise UsageError(f"--target {target} cannot load on {where}; there, use "
                         + ("xen or xen-efi" if host.under_xen else "--mode"))
    return target


class _Files:
    """The image, initrds and add-ons, each opened once; closed however the load ends."""

    def __init__(self, opts: LoadOptions) -> None:
        self.opts = opts
        self.image: OpenedFile | None = None
        self.initrds: list[OpenedFile] = []
        self.addons: list[OpenedFile] = []

    def __enter__(self) -> "_Files":
        try:  # appended one by one, so that a failure (or a signal) half-way closes what is open
            self.image = open_file(self.opts.image)
            for p in self.opts.initrds:
                self.initrds.append(open_file(p))
            if formats.uki.probe(self.image.data):
                wanted = addon_dir(self.opts.image) if self.opts.addons is None else self.opts.addons
                for p in wanted:
                    self.addons.append(open_file(p))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for f in (self.image, *self.initrds, *self.addons):
            if f is not None:
                f.close()


def _check_policy(opts: LoadOptions, files: _Files, lockdown: str | None, efivars: Path | None):
    """The signature policy (``trust.policy``): refuses before anything is prepared."""
    from .trust.efivars import EFIVARS
    from .trust.policy import check_load
    image, initrds, addons = files.image, files.initrds, files.addons
    return check_load(
        image.data, image_name=str(opts.image),
        files=[(str(f.path), os.fstat(f.fd)) for f in (image, *initrds, *addons)],
        addons=[(str(f.path), f.data) for f in addons], initrds=[str(f.path) for f in initrds],
        require=opts.require_signature, trust_files=opts.trust, lockdown=lockdown,
        efivars=efivars or EFIVARS, cmdline_override=(opts.command_line is not None
                                                      or opts.append is not None or opts.reuse_cmdline))


def _refuse_foreign(prepared: Prepared, machine: Machine) -> None:
    """An image for another architecture cannot boot here, whatever the receiver."""
    layer = prepared.kernel_layer
    why = foreign(layer.format, layer.arch, machine.arch)
    if why:
        raise LoadRefused(why)


def _summary(req: Request, files: _Files, signature: str | None) -> LoadSummary:
    prepared = req.prepared
    return LoadSummary(
        layers=tuple(x.format for x in prepared.layers), kernel_format=prepared.kernel_layer.format,
        kernel_size=len(prepared.kernel),
        kernel_source="original file" if req.kernel_fd is not None else "memfd (prepared)",
        initrd_size=len(req.initrd) if req.initrd is not None else sum(f.size for f in files.initrds),
        cmdline=req.cmdline, crash=req.crash, signature=signature)


def _execute(names: tuple[str, ...], handoffs: "_Handoffs", sys_: Syscalls, *,
             lockdown: str | None, prepared: Prepared) -> LoadReport:
    """Hand each receiver its hand-off in turn until one takes it (kexec-tools' fallback rules)."""
    from .backends.linux.policy import explain, falls_back
    report = LoadReport()
    for i, name in enumerate(names):
        handoff = handoffs.get(name)
        backend = backend_for(name, sys_)
        try:
            report.flags = backend.execute(handoff)
        except SyscallError as e:
            if i + 1 == len(names) or not falls_back(e, lockdown=lockdown):
                raise explain(e, lockdown=lockdown, prepared=prepared) from None
            log.info("%s failed with %s; falling back to %s", backend.call, e.errno_name, names[i + 1])
            report.attempts.append(f"{backend.call}: {e.errno_name}")
            handoffs.after_failure(e)
            continue
        report.syscall = backend.call
        report.attempts.append(f"{backend.call}: ok")
        return report
    raise AssertionError("unreachable: the last receiver raises")  # pragma: no cover


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
    raw = None                  # the image as bytes, made once for the emulator's checks and run
    if not opts.via_emulator:
        try:
            return prepare(data, profile=opts.profile, addons=addons, limits=limits)
        except (NotLoadable, UnknownFormat) as e:
            if not pe.has_pe_header(data):
                raise
            refusal = pe.not_a_kernel(data)
            if refusal is not None:
                raise refusal from None
            from . import efi
            raw = bytes(data)
            try:
                efi.detect_arch(raw)
            except FormatError:
                raise e from None       # not a PE the emulator runs (an ARM zImage's stub): the parser's reason
            import logging
            logging.getLogger(__name__).warning(
                "no parser unwraps this PE image (%s); running its EFI stub in the emulator", e)
    return prepare_via_emulator(raw if raw is not None else bytes(data), arch=machine.arch,
                                limits=limits)  # it runs the whole image


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


def refuse_if_violated(predicted: LoadPlan) -> None:
    """Stop before the system call when the receiver's rules would refuse the plan."""
    if predicted.validate():
        raise LoadRefused(_violation_sentence(predicted))


def _violation_sentence(predicted: LoadPlan) -> str:
    first = predicted.validate()[0]
    where = "" if first.segment is None else f" (segment {first.segment}, {first.role})"
    return (f"{predicted.target} would refuse this load with {first.errno}{where}: "
            f"{first.message}")


@dataclass(frozen=True)
class Request:
    """What every receiver's hand-off is made from: the prepared image and the files, read once.

    ``initrd`` is the joined initrd when pykexec made one (UKI sections,
    several files); otherwise the user's one initrd is passed as
    ``initrd_fd`` and read only by a receiver that needs its bytes.
    ``dtb`` is the ``--dtb`` file's bytes and ``sysfs`` where the running
    kernel's own device tree is read (firmware/fdt), for the arm64 builder.
    """

    opts: LoadOptions
    prepared: Prepared
    machine: Machine
    kernel_fd: int | None
    initrd: bytes | None
    initrd_fd: int | None
    initrd_data: Any
    cmdline: str | None
    dtb: Any = None
    sysfs: Path = Path("/sys")

    @property
    def crash(self) -> bool:
        return self.opts.crash

    @property
    def layer(self) -> Any:
        return self.prepared.kernel_layer


def _request(opts: LoadOptions, files: _Files, prepared: Prepared, machine: Machine, sysfs: Path) -> Request:
    initrds = files.initrds
    if not prepared.initrds and len(initrds) == 1:
        initrd, initrd_fd = None, initrds[0].fd
    else:
        initrd, initrd_fd = join_initrds((*prepared.initrds, *(f.data for f in initrds))), None
    cmdline = compose_cmdline(prepared.cmdline, command_line=opts.command_line,
                              append=opts.append, reuse=opts.reuse_cmdline)
    return Request(opts=opts, prepared=prepared, machine=machine,
                   kernel_fd=files.image.fd if prepared.kernel_is_input else None,
                   initrd=initrd, initrd_fd=initrd_fd,
                   initrd_data=initrd if initrd_fd is None else initrds[0].data, cmdline=cmdline,
                   dtb=read_dtb(opts.dtb), sysfs=sysfs)


class _Handoffs:
    """Each receiver's hand-off, made once and only when that receiver is tried."""

    def __init__(self, req: Request, table: Sequence[Entry], advice: Machine | None) -> None:
        self.req, self.table, self.advice = req, table, advice
        self.made: dict[str, Any] = {}
        self.last: Any = None
        self.first_error: SyscallError | None = None

    def get(self, name: str) -> Any:
        if name not in self.made:
            self.made[name] = self._make(name)
        self.last = self.made[name]
        return self.last

    def after_failure(self, err: SyscallError) -> None:
        self.first_error = err

    def _make(self, name: str) -> Any:
        receiver = RECEIVERS[name]
        if receiver.backend is None:
            return self._predict(name, strict=True)
        return self._build(name) if receiver.builds else self._file_load()

    def _file_load(self) -> FileLoad:
        req = self.req
        return FileLoad(kernel=req.prepared.kernel, kernel_fd=req.kernel_fd, initrd=req.initrd,
                        initrd_fd=req.initrd_fd, initrd_size=0 if req.initrd_data is None
                        else len(req.initrd_data), cmdline=req.cmdline, crash=req.crash,
                        debug=req.opts.debug, plan=self._predict("linux-file"))

    def _predict(self, target: str, *, strict: bool = False) -> LoadPlan | None:
        """The planner's prediction, or None when it has no planner for this image or machine.

        On this host's own memory map (/proc/iomem), or with ``strict``, a
        load the planner cannot place is refused; on anything else the
        prediction is only advice.
        """
        from .plan import plan as plan_load
        req = self.req
        machine = self.advice or req.machine
        if find(machine.arch, req.layer, target, self.table) is None:
            if strict:
                raise LoadRefused(f"pykexec has no {target} planner for a {req.layer.format} on "
                                  f"{machine.arch} (it has: {served(self.table)})")
            return None
        strict = strict or (self.advice is None and machine.memory_source == "iomem"
                            and not os.environ.get(TEST_PAST_PLANNER))
        try:
            predicted = plan_load(req.prepared, machine=machine, target=target, crash=req.crash,
                                  initrd=req.initrd_data, cmdline=req.cmdline or "", table=self.table,
                                  entry=req.opts.entry)
        except PlacementError as e:
            if strict:  # ENOEXEC: the receiver's probe refuses the image, whatever the memory
                raise LoadRefused(str(e) if e.errno == "ENOEXEC" else f"the load cannot fit: {e}") from e
            log.info("no placement prediction: %s", e)
            return None
        if strict:
            refuse_if_violated(predicted)
        elif self.advice is not None and predicted.validate():
            log.warning("on the machine described, %s", _violation_sentence(predicted))
        return predicted

    def _build(self, target: str) -> Any:
        """The user-mode load, built once: its plan is the hand-off."""
        from .backends.linux.policy import advise
        from .boot import load_module
        req = self.req
        entry = find(req.machine.arch, req.layer, target, self.table)
        if entry is None or entry.builder is None:
            first = self.first_error
            prefix = "" if first is None else f"kexec_file_load failed ({advise(first)}); "
            raise LoadRefused(f"{prefix}pykexec has no kexec_load ({target}) loader for a {req.layer.format} on "
                              f"{req.machine.arch} (it has: {served(self.table)})")
        built = entry.build(req.prepared, initrd=req.initrd_data, cmdline=req.cmdline, crash=req.crash,
                            machine=req.machine,
                            modules=tuple(load_module(m) for m in req.opts.modules),
                            checks=req.opts.checks, image_name=Path(req.opts.image).name, dtb=req.dtb,
                            sys_root=req.sysfs, entry=req.opts.entry)
        if self.advice is not None:
            self._predict(target)
        return built


def _owner(sysfs: Path, calls: Any) -> Owner:
    """Whoever holds kexec here (:data:`~pykexec.receivers.OWNERS`): Xen in its dom0, or when
    ``calls`` are hypercalls (a test's fake); else Linux."""
    from .backends.xen.probe import is_dom0, is_xen
    xen = hasattr(calls, "kexec_status") or (is_xen(sysfs) and is_dom0(sysfs) is not False)
    return OWNERS["xen" if xen else "linux"]


def _control(sysfs: Path, calls: Any) -> Any:
    return control_for(_owner(sysfs, calls), calls, sysfs)


def status(sysfs: Path = Path("/sys"), *, hypercalls: Any = None) -> Status:
    """What is loaded now: from /sys/kernel, or under Xen from Xen (``kexec_status``)."""
    return _control(sysfs, hypercalls).status()


def unload(*, crash: bool = False, syscalls: Syscalls | None = None, sysfs: Path = Path("/sys")) -> str:
    """Unload the kernel (or the crash kernel); returns the call that did it."""
    from .backends.linux.policy import LoadLock
    with LoadLock():
        return _control(sysfs, syscalls).unload(crash=crash)


def execute(*, sync: bool = True, syscalls: Syscalls | None = None, sysfs: Path = Path("/sys"),
            carry: Mapping[str, str | Path] | None = None) -> None:
    """Reboot into the loaded kernel.  ``carry`` ({name: file}) is preserved through LUO first
    (:mod:`pykexec.carry`), held open by this process through the reboot."""
    owner = _owner(sysfs, syscalls)
    if carry:
        _execute_carrying(carry, owner, control_for(owner, syscalls, sysfs), sync=sync, sysfs=sysfs)
        return
    control_for(owner, syscalls, sysfs).execute(sync=sync)


def _execute_carrying(files: Mapping[str, str | Path], owner: Owner, control: Any, *, sync: bool,
                      sysfs: Path) -> None:
    """Only a KHO handover carries LUO sessions: refuse anything else before preserving."""
    from . import carry
    if owner.carries:
        raise LoadRefused(f"cannot carry files across this kexec: {owner.carries}")
    st = control.status()
    if st.loaded is False:
        raise LoadRefused("no kernel is loaded; load one first with `pykexec load`")
    reason = carry.luo_absent_reason(sys=sysfs)
    if reason is not None:
        raise LoadRefused(f"cannot carry files across kexec: {reason}")
    if st.kho_handover is not True:
        raise LoadRefused("cannot carry files: the next exec is not a Kexec HandOver (KHO is "
                          f"{'off' if st.kho_active is False else 'not known to be on'}); see `pykexec status`")
    preserved = carry.preserve(files)
    try:
        control.execute(sync=sync)
    finally:
        preserved.close()  # the reboot returned: it failed, and the files are unpreserved
