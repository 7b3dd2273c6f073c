"""Plan a load: where each segment goes, for one receiver, before anything is loaded.

One planner per protocol, chosen from :data:`pykexec.receivers.TABLE`:

* x86 bzImage: :mod:`.x86` (``linux-file``: the kernel's kexec_file loader;
  ``linux-user``: a kexec_load loader) and :mod:`.xen` (``xen``,
  ``xen-efi``, ``xen-efi-v2``).
* arm64 Image: :mod:`.arm64` (``linux-file``).

Each planner mirrors ``kexec_add_buffer`` (:mod:`.kexec_buf`) and returns a
:class:`LoadPlan`; :mod:`.validate` holds the receivers' checks.  A load
that cannot be placed raises :class:`~pykexec.errors.PlacementError`.

The default target (:func:`pykexec.receivers.default_target`) is ``xen``
when the machine runs under Xen, else the first receiver in the table whose
own probe takes the image, else ``linux-user``.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import PlacementError, UsageError
from ..formats.bzimage import BzImage
from ..formats.layer import Buffer
from ..machine.model import Machine, foreign
from ..receivers import TABLE, TARGETS, Entry, default_target, find, served
from .common import LINUX_X86_64_PURGATORY, PurgatorySize
from .kexec_buf import KEXEC_SEGMENT_MAX, KexecBuf, Placer, Segment, Walk
from .loadplan import LoadPlan, Violation
from .validate import validate_linux, validate_xen

__all__ = ["plan", "default_target", "LoadPlan", "Segment", "KexecBuf", "Placer", "Walk", "Violation",
           "PurgatorySize", "LINUX_X86_64_PURGATORY", "KEXEC_SEGMENT_MAX", "TARGETS",
           "validate_linux", "validate_xen"]

def _kernel(image: Any) -> tuple[Any, Buffer, Buffer | None, str | None]:
    """(kernel layer, kernel bytes, initrd, cmdline) from a Prepared or a parsed kernel layer.

    The bytes are the image's own (views, not copies): a planner reads the
    headers, and the segments it places view the rest without reading it.
    """
    layer = getattr(image, "kernel_layer", None)
    if layer is not None:  # pykexec.formats.prepare.Prepared
        return layer, image.kernel, image.initrd, image.cmdline
    from ..formats.arm64_image import Arm64Image
    if isinstance(image, Arm64Image):
        return image, image.kernel_bytes, None, None
    if isinstance(image, BzImage):
        return image, image.data, None, None
    raise UsageError(f"plan() takes a Prepared image or a parsed kernel layer, not {type(image).__name__}")


def plan(image: Any, *, machine: Machine, target: str | None = None, crash: bool = False,
         initrd: Buffer | None = None, cmdline: str | None = None,
         purgatory: PurgatorySize | None = None, table: Sequence[Entry] = TABLE,
         image_name: str = "kernel", dtb: Buffer | None = None, entry: int | None = None) -> LoadPlan:
    """Plan loading ``image`` (a :class:`~pykexec.formats.prepare.Prepared` or a BzImage/Arm64Image layer).

    ``initrd``/``cmdline`` default to what the image carries (a UKI's
    .initrd/.cmdline).  ``purgatory`` overrides the size of the purgatory the
    receiver loads; ``table`` is the receivers table to plan from.  Where
    only a user-mode build can place the image (ELF, Multiboot), the plan is
    that build's, with ``image_name`` as the file name a Multiboot loader reports
    and ``dtb`` the device tree an arm64 build starts from (default: the
    image's, else the running kernel's).  ``entry`` asks for a kernel entry (an x86
    bzImage's 64, 32 or 16) where the receiver offers a choice; by default the
    first receiver that offers it is planned.
    """
    layer, data, carried_initrd, carried_cmdline = _kernel(image)
    initrd = carried_initrd if initrd is None else initrd
    cmdline = carried_cmdline if cmdline is None else cmdline
    target = target or default_target(layer, machine, table, entry)
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    why = foreign(layer.format, layer.arch, machine.arch)
    if why:
        raise PlacementError(why, errno="ENOEXEC")
    receiver = find(machine.arch, layer, target, table)
    if receiver is None:
        arch = machine.arch or layer.arch
        raise PlacementError(f"no {target} planner for {layer.format} images on {arch} "
                             f"(planners: {served(table)})", errno="ENOEXEC")
    if receiver.planner is None:  # only a build places this image (ELF, Multiboot): plan what a load builds
        return receiver.build(image, initrd=initrd, cmdline=cmdline, crash=crash, machine=machine,
                              image_name=image_name, dtb=dtb, entry=entry).plan
    return receiver.plan(layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline,
                         purgatory=purgatory, entry=entry)
