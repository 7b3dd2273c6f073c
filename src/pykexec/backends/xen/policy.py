"""What each errno from Xen's kexec hypercall means, in one sentence (xen/common/kexec.c, kimage.c)."""

from __future__ import annotations

import errno
import os

from ...errors import KernelRefused, SyscallError

ADVICE = {
    errno.EADDRNOTAVAIL: "Xen refused a segment's destination: for a crash load every segment and the "
                         "entry must lie inside Xen's crash area (crashkernel= on Xen's command line, "
                         "see `pykexec machine`), and every segment must start and end on a page",
    errno.EINVAL: "Xen refused the load's shape: 16 or more segments, overlapping segments, a buffer "
                  "larger than its destination, or an unknown load type; see `pykexec plan --target xen`",
    errno.EBUSY: "Xen is busy with another kexec operation, or the crash image is in use; retry",
    errno.ENOMEM: "Xen found no memory for the image (for a crash load: Xen's crash area is too small; "
                  "enlarge crashkernel= on Xen's command line)",
    errno.EPERM: "Xen refused the kexec hypercall: only dom0 may use it, and a Xen in lockdown "
                 "(Secure Boot) forbids it",
    errno.ENOSYS: "this Xen was built without kexec (CONFIG_KEXEC)",
    errno.EFAULT: "Xen could not read pykexec's buffers; report this as a pykexec bug",
    errno.ENOENT: "Xen has no image of that type loaded",
    errno.ERANGE: "Xen has no such range (a CPU number past the last one)",
}


def explain(err: SyscallError) -> SyscallError:
    """The same error with Xen's sentence; refusals the user must act on become :class:`KernelRefused`."""
    advice = ADVICE.get(err.errno_value)
    if advice is None or err.advice:
        return err
    if err.errno_value in (errno.EPERM, errno.EADDRNOTAVAIL, errno.ENOSYS):
        return KernelRefused(err.call, err.errno_value, advice)
    return SyscallError(err.call, err.errno_value, os.strerror(err.errno_value), advice=advice)


def explain_load(err: SyscallError, kexec_type: str) -> SyscallError:
    """A refused ``KEXEC_CMD_kexec_load``: the two refusals that depend on the load type get their own
    sentence, the rest :func:`explain`'s.

    * an EFI type refused with EINVAL: pykexec checked the segments as Xen does, so what is left is
      ``kimage_alloc``'s unknown type -- a Xen without the EFI load types (upstream Xen up to 4.22);
    * a classic type refused with EPERM: not dom0, or XenServer's lockdown (56cf11184e), which
      takes only the EFI types."""
    if err.errno_value == errno.EINVAL and kexec_type.endswith("_EFI"):
        return KernelRefused(err.call, err.errno_value,
                             f"this Xen does not implement the EFI load types ({kexec_type} is unknown to it: "
                             "only XenServer's Xen 4.20 has them); the image loaded before is still loaded")
    if err.errno_value == errno.EPERM and not kexec_type.endswith("_EFI"):
        return KernelRefused(err.call, err.errno_value,
                             f"Xen refused {kexec_type or 'the load'}: only dom0 may load, and a Xen in lockdown "
                             "(Secure Boot, or `lockdown` on its command line) takes only the EFI load types; "
                             "in dom0 load with --target xen-efi (or without --target, which picks it)")
    return explain(err)


def loaded_sentence(crash: bool) -> str:
    kind = "crash kernel" if crash else "new kernel"
    undo = "pykexec unload --crash" if crash else "pykexec unload"
    return f"the hypercall had completed: Xen holds the {kind} (`{undo}` removes it)"
