"""Linux's kexec policy as pykexec applies it: which call, when to fall back, what an errno means.

After kexec-tools' ``-a`` (kexec/kexec.c, do_kexec_file_load):

* try ``kexec_file_load`` first;
* fall back to ``kexec_load`` only on ENOSYS, ENOEXEC, EINVAL or ENOTSUP;
* never on signature or key errors (EKEYREJECTED, ENOKEY, EBADMSG, EPERM);
* never use ``kexec_load`` under lockdown: the kernel refuses it anyway.

When the kernel refuses a load for a reason the user must act on (under
lockdown, EPERM means the kernel's signature did not verify against its
keyrings), the error is a :class:`KernelRefused` that says so and what to do,
not a bare errno.  :class:`LoadLock` serialises loads across processes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import KernelRefused, LoadRefused, PykexecError, SyscallError

if TYPE_CHECKING:
    from ...formats.prepare import Prepared

log = logging.getLogger(__name__)

#: flock's answers on a kernel without file locking
NO_LOCKING_ERRNOS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}
FALLBACK_ERRNOS = {errno.ENOSYS, errno.ENOEXEC, errno.EINVAL, errno.ENOTSUP}
ADVICE = {
    errno.EPERM: "the kernel forbids this load: under lockdown or Secure Boot only "
                 "kexec_file_load with a kernel signed by a trusted key is allowed; "
                 "run as root, sign the kernel, or boot without lockdown",
    errno.EKEYREJECTED: "the kernel's signature was checked and rejected; sign it with a key "
                        "in the kernel's secondary or platform keyring (UEFI db or MOK)",
    errno.ENOKEY: "the kernel is unsigned or signed by a key the running kernel does not "
                  "trust; sign it with a key in the secondary or platform keyring",
    errno.EBADMSG: "the kernel's signature is malformed; re-sign it (sbsign) and retry",
    errno.ENOEXEC: "the running kernel's kexec_file_load does not accept this image format; "
                   "try --mode user, or unwrap it with `pykexec extract`",
    errno.EINVAL: "the running kernel rejected the image or arguments (on arm64 this also means "
                  "an unknown format); check the image with `pykexec inspect`",
    errno.ENOSYS: "this kernel has no kexec_file_load (CONFIG_KEXEC_FILE); try --mode user",
    errno.ENOTSUP: "the running kernel does not support this kind of load; try --mode user",
    errno.ENOMEM: "the kernel found no room for the segments; use a smaller initrd, or for "
                  "--crash a larger crashkernel= reservation (see `pykexec plan`)",
    errno.EADDRNOTAVAIL: "a segment found no room in the memory the kernel places it in (for --crash "
                         "the crash region; while Kexec HandOver is on, the KHO scratch areas); "
                         "see `pykexec plan`",
    errno.EBUSY: "a kexec operation is in progress, or the crash kernel is in use; retry",
    errno.EFBIG: "the image or initrd is larger than the kernel accepts (4 GiB)",
    errno.EACCES: "access denied: IMA appraisal or an LSM refused the file; check its "
                  "security.ima signature and the IMA policy",
    errno.EBADF: "a file descriptor was invalid; report this as a pykexec bug",
    errno.EFAULT: "the kernel could not read our buffers; report this as a pykexec bug",
    errno.ENOENT: "nothing is loaded to unload or execute",
    errno.E2BIG: "too many segments for kexec_load (16 at most)",
}
LOCK_PATHS = (Path("/run/lock/pykexec.lock"), Path("/run/pykexec.lock"), Path("/tmp/pykexec.lock"))
PROC = Path("/proc")
CAP_SYS_BOOT = 22
#: errnos with which kexec_file_load refuses the kernel's signature (kimage_validate_signature)
SIGNATURE_ERRNOS = {errno.EKEYREJECTED, errno.ENOKEY, errno.EBADMSG}
KEYRINGS = ("the kernel's keyrings: builtin, secondary, and platform (the UEFI db and MOK "
            "certificates)")


def advise(err: SyscallError) -> SyscallError:
    """The same error, with the sentence that tells the user what to do."""
    advice = ADVICE.get(err.errno_value)
    if advice is None or err.advice:
        return err
    return SyscallError(err.call, err.errno_value, os.strerror(err.errno_value), advice=advice)


def explain(err: SyscallError, *, lockdown: str | None, prepared: Prepared | None = None,
            proc: Path = PROC) -> SyscallError:
    """What a failed kernel call means here: a :class:`KernelRefused` sentence where the
    cause is known (missing CAP_SYS_BOOT, kexec disabled, a signature under lockdown),
    else :func:`advise`'s generic advice."""
    e = err.errno_value
    if e == errno.EPERM:
        sentence = _eperm_cause(err.call, lockdown, prepared, proc)
        if sentence:
            return KernelRefused(err.call, e, sentence)
    elif e in SIGNATURE_ERRNOS and err.call == "kexec_file_load":
        why = {errno.EKEYREJECTED: "its signature was checked against " + KEYRINGS
                                   + " and rejected",
               errno.ENOKEY: "it is unsigned, or signed by a key that is not in " + KEYRINGS,
               errno.EBADMSG: "its signature is malformed"}[e]
        return KernelRefused(err.call, e, _signature_sentence(why, prepared))
    return advise(err)


def _eperm_cause(call: str, lockdown: str | None, prepared: Prepared | None,
                 proc: Path) -> str | None:
    """kexec_load_permitted(): CAP_SYS_BOOT and the sysctls; then, under lockdown,
    kimage_validate_signature() (kexec_file_load) or kexec_load_check() (kexec_load)."""
    caps = _read(proc / "self" / "status")
    eff = next((line.split()[1] for line in caps.splitlines() if line.startswith("CapEff:")), None)
    if eff is not None and not int(eff, 16) >> CAP_SYS_BOOT & 1:
        return "loading a kernel needs CAP_SYS_BOOT: run pykexec as root"
    if _read(proc / "sys" / "kernel" / "kexec_load_disabled").strip() == "1":
        return ("kexec is disabled until the next boot (/proc/sys/kernel/kexec_load_disabled "
                "is 1)")
    for name in ("kexec_load_limit_reboot", "kexec_load_limit_panic"):
        if _read(proc / "sys" / "kernel" / name).strip() == "0":
            return (f"this kernel allows no more loads of this kind (/proc/sys/kernel/{name} "
                    f"is 0)")
    if lockdown in (None, "none"):
        return None
    if call != "kexec_file_load":
        return (f"kernel lockdown is '{lockdown}': the kernel refuses {call}; use "
                f"kexec_file_load (--mode file) with a signed kernel")
    return _signature_sentence(
        f"kernel lockdown is '{lockdown}', so kexec_file_load accepts only a kernel whose own "
        f"signature verifies against {KEYRINGS}", prepared)


def _signature_sentence(why: str, prepared: Prepared | None) -> str:
    if prepared is not None and any(x.format == "uki" for x in prepared.layers):
        return (f"the running kernel refused the kernel inside this UKI (its .linux section): "
                f"{why}; the UKI's own signature does not count for it, so build the UKI "
                f"around a kernel signed by one of those keys (e.g. the distribution's signed "
                f"vmlinuz)")
    return (f"the running kernel refused this kernel: {why}; load a kernel signed by one of "
            f"those keys (e.g. the distribution's signed kernel, on a machine whose UEFI db "
            f"or MOK holds its CA), or enrol the signer's certificate with mokutil --import")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def falls_back(err: SyscallError, *, lockdown: str | None) -> bool:
    """Whether ``auto`` may try kexec_load after kexec_file_load failed with ``err``."""
    return err.errno_value in FALLBACK_ERRNOS and lockdown in (None, "none")


def refuse_user_mode_under_lockdown(lockdown: str | None, asked: str = "--mode user") -> None:
    """Under lockdown the kernel refuses kexec_load, which ``asked`` needs: say so before building anything."""
    if lockdown not in (None, "none"):
        raise LoadRefused(f"kernel lockdown is '{lockdown}': the kernel refuses kexec_load, "
                          f"so {asked} cannot work; use --mode file with a signed kernel")


def loaded_sentence(crash: bool) -> str:
    """What a signal during a successful load call leaves behind."""
    kind = "crash kernel" if crash else "new kernel"
    undo = "pykexec unload --crash" if crash else "pykexec unload"
    return f"the kernel call had completed: the {kind} is loaded (`{undo}` removes it)"


class LoadLock:
    """Serialises loads across processes; the second one waits, then says so."""

    def __init__(self, timeout: float = 60.0, paths: tuple[Path, ...] = LOCK_PATHS) -> None:
        self.timeout, self.paths, self.fd = timeout, paths, -1

    def __enter__(self) -> "LoadLock":
        self.fd = self._open()
        try:
            self._wait()
        except BaseException:  # timed out, or interrupted while waiting: __exit__ will not run
            os.close(self.fd)
            raise
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if not isinstance(e, BlockingIOError):
                    self._unlocked(e)
                    return
                if not told:
                    log.warning("another pykexec is loading; waiting up to %.0f s", self.timeout)
                    told = True
                if time.monotonic() > deadline:
                    raise PykexecError(f"another pykexec still holds the load lock after "
                                       f"{self.timeout:.0f} s; try again later") from None
                time.sleep(0.1)

    @staticmethod
    def _unlocked(err: OSError) -> None:
        """A kernel without file locking (no CONFIG_FILE_LOCKING: ENOSYS, ENOLCK) cannot serialise
        loads; the load goes on, and says so."""
        if err.errno not in NO_LOCKING_ERRNOS:
            name = errno.errorcode.get(err.errno, err.errno)
            raise PykexecError(f"flock of the load lock: {err.strerror} ({name})") from None
        log.warning("flock of the load lock: %s: this kernel cannot lock files (CONFIG_FILE_LOCKING), "
                    "so concurrent loads are not serialised", err.strerror)

    def _open(self) -> int:
        for path in self.paths:
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                continue
        raise PykexecError("cannot create a lock file in /run/lock, /run or /tmp")

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
