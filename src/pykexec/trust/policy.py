"""The signature policy of a load: when a signature is required, and what it must cover.

* A signature is required when the user asks (``--require-signature``), and by
  default when the kernel is locked down or UEFI Secure Boot is enabled
  (``SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c`` is 1).
* The image is verified **as read**, before anything is split out of it: a
  UKI is verified whole, so its ``.cmdline``, ``.initrd`` and ``.ucode`` are
  covered; each add-on is verified too, as systemd-stub requires under Secure
  Boot (``src/boot/stub.c``: add-ons are loaded through ``LoadImage``).
* Under the policy, a UKI's signed ``.cmdline`` cannot be replaced from the
  command line (systemd-stub ignores the loader's command line under Secure
  Boot when the UKI has one).
* Files that others than their owner and root could write draw a warning.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import FormatError, SignatureRejected
from ..formats import pe
from .efivars import ATTRIBUTES_SIZE, EFI_GLOBAL_VARIABLE, EFIVARS, efivar_name

if TYPE_CHECKING:  # cryptography is imported only when a signature is checked
    from .store import TrustStore
    from .verify import Verdict

log = logging.getLogger(__name__)

SECURE_BOOT = efivar_name("SecureBoot", EFI_GLOBAL_VARIABLE)
ADVICE = ("sign it (e.g. sbsign) with a key whose certificate you pass with --trust, or enrol "
          "the signing CA in db or MOK (mokutil --import); --no-require-signature skips this "
          "check and leaves it to the kernel")
NO_ANCHORS = ("there are no trust anchors: no --trust was given and the machine's UEFI db and "
              "MokListRT are not readable")


def read_secure_boot(efivars: Path = EFIVARS) -> bool | None:
    """Whether Secure Boot is on: True, False, or None when it cannot be told (no efivarfs)."""
    try:
        raw = (efivars / SECURE_BOOT).read_bytes()
    except FileNotFoundError:
        return False if efivars.is_dir() else None
    except OSError:
        return None
    return len(raw) > ATTRIBUTES_SIZE and raw[ATTRIBUTES_SIZE] == 1


def default_required(lockdown: str | None, secure_boot: bool | None) -> bool:
    """The default of ``--require-signature``: on under lockdown or Secure Boot."""
    return lockdown not in (None, "none") or secure_boot is True


def _default_reason(lockdown: str | None, secure_boot: bool | None) -> str:
    if lockdown not in (None, "none"):
        return f"kernel lockdown is '{lockdown}'"
    if secure_boot:
        return "UEFI Secure Boot is enabled"
    return "neither lockdown nor Secure Boot is on"


def require_signature(data: bytes, *, trust: TrustStore, what: str,
                      why: str | None = None) -> Verdict:
    """The verdict for ``data``; raises :class:`SignatureRejected` unless it is verified.
    ``why`` (the reason a signature is required) is named in the refusal."""
    from .verify import verify_image
    verdict = verify_image(data, trust, what=what)
    if not verdict.verified:
        reason = verdict.reason if why is None else f"{verdict.reason} (required: {why})"
        raise SignatureRejected(what, reason, advice=ADVICE, verdict=verdict)
    log.info("%s: %s", what, verdict.reason)
    return verdict


def writable_warning(target: os.stat_result | str | Path, *, what: str | None = None) -> str | None:
    """A warning when someone other than the file's owner or root may write it, else None."""
    if isinstance(target, os.stat_result):
        st, name = target, what or "file"
    else:
        st, name = os.stat(target), what or str(target)
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        who = "anyone"
    elif mode & stat.S_IWGRP and st.st_gid != 0:
        who = f"group {st.st_gid}"
    else:
        return None
    return (f"{name} is writable by {who} (mode {mode:04o}, owner uid {st.st_uid}); another "
            f"user could replace it; chmod go-w it")


@dataclass(frozen=True)
class LoadTrust:
    """What the policy decided for one load."""

    required: bool
    why: str
    verdicts: tuple[Verdict, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        out = asdict(self)
        out["verdicts"] = [v.to_json() for v in self.verdicts]
        return out

    @property
    def summary(self) -> str:
        if not self.required:
            return f"not checked ({self.why})"
        return "; ".join(f"{v.what}: {v.reason}" for v in self.verdicts)


def check_load(image: bytes, *, image_name: str,
               files: Sequence[tuple[str, os.stat_result]] = (),
               addons: Sequence[tuple[str, bytes]] = (), initrds: Sequence[str] = (),
               require: bool | None = None, trust: TrustStore | None = None,
               trust_files: Sequence[str | Path] = (), lockdown: str | None = None,
               efivars: Path = EFIVARS, cmdline_override: bool = False) -> LoadTrust:
    """The load policy, run on the bytes that will be loaded, before they are split.

    ``files`` are (name, stat) of every file read (image, initrds, add-ons);
    ``addons`` the add-ons' bytes; ``initrds`` the names of ``--initrd`` files;
    ``require`` the user's choice (None: the default for this machine);
    ``cmdline_override`` whether the command line is replaced or extended
    (``--command-line``, ``--append``, ``--reuse-cmdline``).
    Raises :class:`SignatureRejected` when a required signature fails.
    """
    warnings = tuple(w for name, st in files if (w := writable_warning(st, what=name)))
    for w in warnings:
        log.warning("%s", w)
    if require is None:
        secure_boot = read_secure_boot(efivars)
        required = default_required(lockdown, secure_boot)
        why = _default_reason(lockdown, secure_boot)
    else:
        required = require
        why = "--require-signature" if require else "--no-require-signature"
    if not required:
        return LoadTrust(False, why, warnings=warnings)
    if trust is None:
        from .store import TrustStore
        trust = TrustStore.load(tuple(trust_files), efivars=efivars)
    if trust.empty:
        raise SignatureRejected(image_name, NO_ANCHORS,
                                advice="pass --trust FILE with the signing certificate (PEM, "
                                       "DER or an EFI signature list)")
    verdicts = [require_signature(image, trust=trust, what=image_name, why=why)]
    for name, data in addons:
        verdicts.append(require_signature(data, trust=trust, what=f"add-on {name}", why=why))
    notes = []
    uki_cmdline = _has_section(image, ".linux") and _has_section(image, ".cmdline")
    if cmdline_override and uki_cmdline:
        raise SignatureRejected(image_name, "the UKI's signed .cmdline would be replaced or "
                                "extended from the command line, which its signature does not "
                                "cover", advice="drop --command-line/--append/--reuse-cmdline, "
                                "or put the extra arguments in a signed add-on")
    if cmdline_override:
        notes.append("the command line is not covered by any signature")
    for name in initrds:
        notes.append(f"initrd {name} is not covered by any signature")
    return LoadTrust(True, why, tuple(verdicts), warnings, tuple(notes))


def _has_section(data: bytes, name: str) -> bool:
    if not pe.has_pe_header(data):
        return False
    try:
        return any(s.name == name for s in pe.read_header(data).sections)
    except FormatError:
        return False
