"""Which code serves a load: one table of (architecture, kernel layer, receiver) entries.

A receiver is what takes the load: Linux's ``kexec_file_load``
(``linux-file``), Linux's ``kexec_load`` with pykexec's own boot data and
purgatory (``linux-user``), or Xen's kexec hypercall (``xen``, and
``xen-efi`` for the EFI load types of XenServer's Xen, ``xen-efi-v2`` for
those of the series posted upstream, which only plans).  Each :class:`Entry` names, for
one machine architecture and the kernel layers it boots there:

* the **planner**, which predicts where the receiver puts each segment;
* the **builder**, which makes every byte of a user-mode load (and whose
  plan is then the load itself); every builder takes ``(prepared, *,
  initrd, cmdline, crash, machine, modules, checks, image_name, dtb,
  sys_root)``;
* the **purgatory**, whose size and entry the planner must find room for;
* **accepts**, the receiver's own probe (``bzImage64_probe``), which picks
  the default receiver for an image.

Functions are named as ``"module:function"`` strings and imported on first
use, so that reading the table costs nothing: inspect and extract never load
a planner.  Who holds what is loaded, Linux or in Xen's dom0 the
hypervisor, is an :class:`Owner` in :data:`OWNERS`: the receivers that load
into it, its ``load --mode`` choices and the control for status, unload and
exec.  A new architecture or receiver is a module plus one entry here;
:func:`pykexec.plan.plan` and :func:`pykexec.api.load` read only this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .errors import LoadRefused, PlacementError, UsageError
from .machine.model import normalize_arch, runs_on

if TYPE_CHECKING:
    from .backends import Backend

#: the receivers, in the order a plan lists them
TARGETS = ("linux-file", "linux-user", "xen", "xen-efi", "xen-efi-v2")
#: ``load --mode``: the receivers tried, in order (auto falls back as kexec-tools' -a does)
MODES = {"file": ("linux-file",), "user": ("linux-user",), "auto": ("linux-file", "linux-user")}
#: the same under Xen, where kexec belongs to the hypervisor: user space builds the load (as for
#: kexec_load) and hands it to the hypercall; there is no file mode (kexec-tools refuses -s there)
XEN_MODES = {"file": (), "user": ("xen",), "auto": ("xen",)}
#: the same while Kexec HandOver is active: only kexec_file_load hands over (kho_fill_kimage,
#: setup_kho in kexec-bzimage64.c), so auto never falls back and user mode is refused with
#: the kernel's reason (Documentation/admin-guide/mm/kho.rst)
KHO_MODES = {"file": ("linux-file",), "user": (), "auto": ("linux-file",)}
KHO_USER_MODE = ("Kexec HandOver is active, and only kexec_file_load hands over: the kernel's "
                 "kho.rst says \"user space kexec tooling currently has no support for KHO with the "
                 "user space based file loader\"; use --mode file (or auto)")


@dataclass(frozen=True)
class Receiver:
    """A receiver: whether user space builds every byte for it, and the backend that executes its hand-off."""

    name: str
    builds: bool
    backend: str | None = None
    why_not: str = ""


RECEIVERS = {
    "linux-file": Receiver("linux-file", builds=False, backend="pykexec.backends.linux.file:FileBackend"),
    "linux-user": Receiver("linux-user", builds=True, backend="pykexec.backends.linux.user:UserBackend"),
    "xen": Receiver("xen", builds=True, backend="pykexec.backends.xen.backend:XenBackend"),
    "xen-efi": Receiver("xen-efi", builds=True, backend="pykexec.backends.xen.backend:XenBackend"),
    "xen-efi-v2": Receiver("xen-efi-v2", builds=True, why_not="the v2 series' KEXEC_TYPE_CRASH_EFI is only "
                           "proposed (xen-devel, 2026-06), in no released Xen; pykexec only plans it "
                           "(`pykexec plan --target xen-efi-v2`); XenServer's Xen takes --target xen-efi"),
}


@dataclass(frozen=True)
class Owner:
    """Who holds kexec on a machine: Linux, or in Xen's dom0 the hypervisor.

    ``targets`` are the receivers that load into it, ``modes`` what each ``load --mode`` tries
    there, ``default`` its receiver when none is asked for (None: the first whose probe takes
    the image), and ``control`` (a ``"module:Class"`` taking ``(calls, sysfs)``) reports its
    status, unloads and execs.  ``no_mode`` is why a mode with no receivers there has none, and
    ``carries`` why LUO files cannot cross its exec ("": they can).
    """

    name: str
    targets: tuple[str, ...]
    modes: Mapping[str, tuple[str, ...]]
    control: str
    default: str | None = None
    no_mode: str = ""
    carries: str = ""


OWNERS = {
    "linux": Owner("linux", ("linux-file", "linux-user"), MODES, "pykexec.backends.linux.control:LinuxControl"),
    "xen": Owner("xen", ("xen", "xen-efi", "xen-efi-v2"), XEN_MODES, "pykexec.backends.xen.control:XenControl",
                 default="xen", no_mode="under Xen kexec belongs to the hypervisor, and kexec_file_load would "
                 "load into dom0's Linux, which cannot take over the machine; use --mode auto or user (the "
                 "kexec hypercall)",
                 carries="Xen holds the next kernel, and only Linux's Kexec HandOver "
                 "carries files"),
}


def owner_of(machine: Any) -> Owner:
    """The owner on ``machine`` (a :class:`~pykexec.machine.model.Machine`)."""
    return OWNERS["xen" if machine.under_xen else "linux"]


def control_for(owner: Owner, calls: Any, sysfs: Any) -> Any:
    """``owner``'s control, acting through ``calls`` (None: the real calls) and reading ``sysfs``."""
    return _resolve(owner.control)(calls, sysfs)


def backend_for(name: str, syscalls: Any) -> "Backend":
    """The backend that executes ``name``'s hand-off on ``syscalls``."""
    receiver = RECEIVERS[name]
    if receiver.backend is None:
        raise LoadRefused(f"cannot load through {name}: {receiver.why_not}")
    return _resolve(receiver.backend)(syscalls)


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Entry:
    """One (architecture, kernel layers, receiver) and the code that serves it."""

    arch: str
    layers: frozenset[str]
    target: str
    planner: str | None = None
    builder: str | None = None
    purgatory: str | None = None
    accepts: str | None = None
    entries: frozenset[int] = frozenset()

    def serves(self, machine_arch: str | None, layer: Any, target: str | None = None) -> bool:
        """Whether this entry loads ``layer`` on a ``machine_arch`` machine (unknown: one the
        image runs on) through ``target`` (None: any)."""
        arch = normalize_arch(machine_arch)
        fits = arch == self.arch if arch is not None else runs_on(layer.arch, self.arch)
        return fits and layer.format in self.layers and target in (None, self.target)

    def purgatory_size(self):
        """The :class:`~pykexec.plan.common.PurgatorySize` the purgatory reports itself
        (a kernel's purgatory: as measured), or None where the receiver runs none."""
        if self.purgatory is None:
            return None
        size = _resolve(self.purgatory)
        return size() if callable(size) else size

    def refusal(self, layer: Any, machine: Any) -> str | None:
        """Why this receiver's own probe refuses ``layer`` (None: it takes it)."""
        if self.accepts is None:
            return None
        try:
            _resolve(self.accepts)(layer, layer.data, machine)
        except PlacementError as e:
            return str(e)
        return None

    def plan(self, layer: Any, data: Any, *, machine: Any, crash: bool, initrd: Any, cmdline: str | None,
             purgatory: Any = None, entry: int | None = None):
        """The planner's :class:`~pykexec.plan.LoadPlan` (``purgatory`` overrides the purgatory's size;
        ``entry`` is the kernel entry asked for, where the receiver offers a choice)."""
        if self.planner is None:
            raise PlacementError(f"no {self.target} planner for {layer.format} images on {self.arch}; "
                                 "only a load builds this one", errno="ENOEXEC")
        extra = self._entry(entry, layer)
        if self.purgatory is not None:  # else the receiver has no purgatory to size
            extra["purgatory"] = purgatory or self.purgatory_size()
        return _resolve(self.planner)(layer, data, machine=machine, crash=crash, initrd=initrd,
                                      cmdline=cmdline, **extra)

    def build(self, prepared: Any, *, entry: int | None = None, **kw: Any):
        """The user-mode builder's load: every segment's bytes, with the plan they fill."""
        if self.builder is None:
            raise PlacementError(f"no {self.target} builder for {self.arch}", errno="ENOEXEC")
        return _resolve(self.builder)(prepared, **self._entry(entry, prepared.kernel_layer), **kw)

    def _entry(self, entry: int | None, layer: Any) -> dict[str, int]:
        """The ``entry`` argument for this receiver's planner or builder: none unless one was asked
        for, and then only one this receiver offers."""
        if entry is None:
            return {}
        if entry not in self.entries:
            offers = (f"offers {', '.join(map(str, sorted(self.entries)))}" if self.entries
                      else "chooses the entry itself")
            raise UsageError(f"--entry {entry}: {self.target} on {self.arch} {offers} for {layer.format} "
                             f"images; --entry is for {entry_offers()}")
        return {"entry": entry}


_X86_PURGATORY = "pykexec.boot.purgatory:size"
_X86_USER = "pykexec.boot.usermode:build_user_load"
_X86_XEN = "pykexec.boot.xen:build_xen_load"

TABLE: tuple[Entry, ...] = (
    Entry("x86_64", frozenset({"bzimage"}), "linux-file", planner="pykexec.plan.x86:plan_file",
          purgatory="pykexec.plan.common:LINUX_X86_64_PURGATORY", accepts="pykexec.plan.x86:probe_file"),
    Entry("x86_64", frozenset({"bzimage"}), "linux-user", planner="pykexec.plan.x86:plan_user",
          builder=_X86_USER, purgatory=_X86_PURGATORY, entries=frozenset({64, 32, 16})),
    Entry("x86_64", frozenset({"elf", "multiboot2", "multiboot"}), "linux-user", builder=_X86_USER,
          purgatory=_X86_PURGATORY),
    Entry("x86_64", frozenset({"bzimage"}), "xen", planner="pykexec.plan.xen:plan_xen",
          builder=_X86_XEN, purgatory=_X86_PURGATORY),
    Entry("x86_64", frozenset({"elf", "multiboot2", "multiboot"}), "xen", builder=_X86_XEN,
          purgatory=_X86_PURGATORY),
    Entry("x86_64", frozenset({"bzimage"}), "xen-efi", planner="pykexec.plan.xen:plan_xen_efi",
          builder="pykexec.boot.xen:build_xen_efi_load"),
    Entry("x86_64", frozenset({"bzimage"}), "xen-efi-v2", planner="pykexec.plan.xen:plan_xen_efi_v2"),
    Entry("arm64", frozenset({"arm64-image"}), "linux-file", planner="pykexec.plan.arm64:plan_file"),
    Entry("arm64", frozenset({"arm64-image"}), "linux-user", builder="pykexec.boot.arm64:build_arm64_load"),
)


def find(machine_arch: str | None, layer: Any, target: str, table: Sequence[Entry] = TABLE) -> Entry | None:
    """The entry serving the kernel ``layer`` on a ``machine_arch`` machine through ``target``, if any."""
    return next((e for e in table if e.serves(machine_arch, layer, target)), None)


def default_target(layer: Any, machine: Any, table: Sequence[Entry] = TABLE, wanted: int | None = None) -> str:
    """The receiver a load goes to by default.

    Under Xen the hypervisor owns kexec (kexec-tools turns kexec_file off
    there).  Otherwise the first entry, in table order, whose receiver's own
    probe takes the image and which offers the ``wanted`` kernel entry (if
    one is asked for); ``linux-user`` when none does.
    """
    owner = owner_of(machine)
    if owner.default is not None:
        return owner.default
    for entry in table:
        if entry.serves(machine.arch, layer) and entry.target in owner.targets \
                and (wanted is None or wanted in entry.entries) and entry.refusal(layer, machine) is None:
            return entry.target
    return "linux-user"


def entry_offers(table: Sequence[Entry] = TABLE) -> str:
    """Who offers a choice of kernel entry, for messages: "linux-user with an x86_64 bzimage (16, 32, 64)"."""
    return "; ".join(f"{e.target} with an {e.arch} {'/'.join(sorted(e.layers))} "
                     f"({', '.join(map(str, sorted(e.entries)))})" for e in table if e.entries)


def served(table: Sequence[Entry] = TABLE) -> str:
    """What the table serves, for messages: "x86_64 bzimage (linux-file, ...); ..."."""
    groups: dict[tuple[str, str], list[str]] = {}
    for e in table:
        for layer in sorted(e.layers):
            groups.setdefault((e.arch, layer), []).append(e.target)
    return "; ".join(f"{arch} {layer} ({', '.join(t)})" for (arch, layer), t in groups.items())
