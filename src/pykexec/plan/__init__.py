"""Plan a load: where each segment goes, for one receiver, before anything is loaded.

One planner per protocol:

* x86 bzImage: :mod:`.x86` (``linux-file``: the kernel's kexec_file loader;
  ``linux-user``: a kexec_load loader) and :mod:`.xen` (``xen``,
  ``xen-efi``).
* arm64 Image: :mod:`.arm64` (``linux-file``).

Each planner mirrors ``kexec_add_buffer`` (:mod:`.kexec_buf`) and returns a
:class:`LoadPlan`; :mod:`.validate` holds the receivers' checks.  A load
that cannot be placed raises :class:`~pykexec.errors.PlacementError`.

The default target is ``linux-file`` when the machine's architecture matches
the image's and the running kernel's kexec_file_load takes that image type
(x86_64 bzImage64, arm64 Image); ``xen`` when the machine runs under Xen
(kexec-tools turns kexec_file off there); otherwise ``linux-user``.
"""

from __future__ import annotations

from typing import Any

from ..errors import PlacementError, UsageError
from ..formats.arm64_image import Arm64Image
from ..formats.bzimage import BzImage
from ..machine.model import Machine
from . import arm64, x86, xen
from .common import LINUX_X86_64_PURGATORY, USER_PURGATORY, PurgatorySize
from .kexec_buf import KEXEC_SEGMENT_MAX, KexecBuf, Placer, Segment, Walk
from .loadplan import TARGETS, LoadPlan, Violation
from .validate import validate_linux, validate_xen

__all__ = ["plan", "default_target", "LoadPlan", "Segment", "KexecBuf", "Placer", "Walk", "Violation",
           "PurgatorySize", "LINUX_X86_64_PURGATORY", "USER_PURGATORY", "KEXEC_SEGMENT_MAX", "TARGETS",
           "validate_linux", "validate_xen"]


def _kernel(image: Any) -> tuple[Any, bytes, bytes | None, str | None]:
    """(kernel layer, kernel bytes, initrd, cmdline) from a Prepared or a parsed kernel layer."""
    layer = getattr(image, "kernel_layer", None)
    if layer is not None:  # pykexec.prepare.Prepared
        return layer, bytes(image.kernel), image.initrd, image.cmdline
    if isinstance(image, Arm64Image):
        return image, bytes(image.kernel_bytes), None, None
    if isinstance(image, BzImage):
        return image, bytes(image.data), None, None
    raise UsageError(f"plan() takes a Prepared image or a parsed kernel layer, not {type(image).__name__}")


def default_target(layer: Any, machine: Machine) -> str:
    if machine.under_xen:
        return "xen"
    arch = machine.arch or layer.arch
    if isinstance(layer, BzImage) and arch == "x86_64" and layer.arch == "x86_64" \
            and layer.protocol >= 0x020C and layer.xloadflags & 3 == 3 and layer.loadflags & 1:
        return "linux-file"
    if isinstance(layer, Arm64Image) and arch == "arm64":
        return "linux-file"
    return "linux-user"


def plan(image: Any, *, machine: Machine, target: str | None = None, crash: bool = False,
         initrd: bytes | None = None, cmdline: str | None = None,
         purgatory: PurgatorySize | None = None) -> LoadPlan:
    """Plan loading ``image`` (a :class:`~pykexec.prepare.Prepared` or a BzImage/Arm64Image layer).

    ``initrd``/``cmdline`` default to what the image carries (a UKI's
    .initrd/.cmdline).  ``purgatory`` overrides the purgatory size the
    x86 planners assume.
    """
    layer, data, carried_initrd, carried_cmdline = _kernel(image)
    initrd = carried_initrd if initrd is None else initrd
    cmdline = carried_cmdline if cmdline is None else cmdline
    target = target or default_target(layer, machine)
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if machine.arch is not None and layer.arch is not None and _family(machine.arch) != _family(layer.arch) \
            and not target.startswith("xen"):
        raise PlacementError(f"the image is for {layer.arch} but the machine is {machine.arch}",
                             errno="ENOEXEC")
    initrd = bytes(initrd) if initrd is not None else None
    if isinstance(layer, BzImage):
        if target == "linux-file":
            return x86.plan_file(layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline,
                                 purgatory=purgatory or LINUX_X86_64_PURGATORY)
        if target == "linux-user":
            return x86.plan_user(layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline,
                                 purgatory=purgatory or USER_PURGATORY)
        if target == "xen":
            return xen.plan_xen(layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline,
                                purgatory=purgatory or USER_PURGATORY)
        return xen.plan_xen_efi(layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline)
    if isinstance(layer, Arm64Image):
        if target != "linux-file":
            raise PlacementError(f"arm64 Images are planned for linux-file only; {target} has no arm64 "
                                 "planner yet", errno="ENOEXEC")
        return arm64.plan_file(layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline)
    raise PlacementError(f"no planner for {layer.format} images (planners: x86 bzImage, arm64 Image)",
                         errno="ENOEXEC")


def _family(arch: str) -> str:
    return {"x86": "x86_64"}.get(arch, arch)
