"""UEFI for the lockdown scenarios: OVMF with certificates in ``db``, and efivarfs.

Why UEFI: Debian's kernel trusts no distribution key of its own.  Its builtin
keyring holds only the build-time key that signs its modules (bookworm's
``CONFIG_SYSTEM_TRUSTED_KEYS`` is empty), so under lockdown, with BIOS boot,
``kexec_file_load`` refuses even Debian's signed kernel (EPERM).  On a real
machine Debian's kernel is trusted through the *platform* keyring, which the
kernel fills at boot from the UEFI ``db`` (and shim's MOK list).  Here the
firmware is OVMF and its ``db`` holds Debian's Secure Boot CA, which is what
the kernel's ``kexec_file_load`` then verifies Debian's kernel against.

* :func:`firmware` installs Debian's ``ovmf`` (the system's suite) when missing.
* :func:`vars_with_db` writes an OVMF variable store whose only variable is
  ``db`` (an EFI_SIGNATURE_LIST of X.509 certificates).  Secure Boot stays off
  (no PK): firmware boots anything, and lockdown comes from the command line.
  The layout is written here, not with pykexec's own ESL code: UEFI 2.10
  §32.4.1 (EFI_SIGNATURE_LIST) and EDK II's ``VariableFormat.h``
  (VARIABLE_STORE_HEADER, AUTHENTICATED_VARIABLE_HEADER); the kernel's
  ``load_uefi_certs`` reading the certificate back is the check.
* :func:`efivarfs_module` extracts ``efivarfs.ko`` from the guest kernel's own
  package (efivarfs is a module in Debian's cloud kernel), so that the guest
  can mount efivarfs and pykexec can read ``db`` as the kernel did.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Sequence

from . import harness as h

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_IMAGE_SECURITY_DATABASE_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
#: the signature owner written into each EFI_SIGNATURE_DATA (any GUID will do)
OWNER = uuid.UUID("70796b65-7865-6300-8000-00000000d0b1")
EFI_AUTHENTICATED_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
VARIABLE_DATA = 0x55AA  # StartId
VAR_ADDED = 0x3F        # State: VAR_ADDED with the in-deleted/header-valid bits left set
# EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS
DB_ATTRIBUTES = 0x01 | 0x02 | 0x04 | 0x20


def firmware() -> tuple[Path, Path]:
    """OVMF's code and (empty) variable store templates."""
    if not OVMF_CODE.is_file() or not OVMF_VARS.is_file():
        h._apt_install(["ovmf"], "UEFI firmware (OVMF) for the lockdown scenarios")
    if not OVMF_CODE.is_file() or not OVMF_VARS.is_file():
        raise h.VmError(f"{OVMF_CODE} or {OVMF_VARS} missing even after installing ovmf")
    return OVMF_CODE, OVMF_VARS


def signature_list(certs: Sequence[bytes]) -> bytes:
    """One EFI_SIGNATURE_LIST per certificate (X.509 entries differ in size)."""
    out = b""
    for der in certs:
        entry = OWNER.bytes_le + der
        out += EFI_CERT_X509_GUID.bytes_le + struct.pack("<III", 28 + len(entry), 0, len(entry)) + entry
    return out


def _variable(name: str, guid: uuid.UUID, data: bytes, attributes: int) -> bytes:
    name16 = (name + "\0").encode("utf-16-le")
    timestamp = struct.pack("<HBBBBBBIhBB", 2024, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)  # EFI_TIME
    header = (struct.pack("<HBBIQ", VARIABLE_DATA, VAR_ADDED, 0, attributes, 0) + timestamp
              + struct.pack("<III", 0, len(name16), len(data)) + guid.bytes_le)
    var = header + name16 + data
    return var + b"\xff" * (-len(var) % 4)  # HEADER_ALIGNMENT


def vars_with_db(out: Path, certs: Sequence[bytes]) -> Path:
    """A copy of OVMF's empty variable store with ``db`` = ``certs``."""
    _, template = firmware()
    store = bytearray(template.read_bytes())
    fv_header_length = struct.unpack_from("<H", store, 0x30)[0]
    guid = uuid.UUID(bytes_le=bytes(store[fv_header_length:fv_header_length + 16]))
    if guid != EFI_AUTHENTICATED_VARIABLE_GUID:
        raise h.VmError(f"{template}: the variable store at {fv_header_length:#x} is {guid}, "
                        f"not the authenticated-variable format")
    first = fv_header_length + 28  # sizeof(VARIABLE_STORE_HEADER)
    var = _variable("db", EFI_IMAGE_SECURITY_DATABASE_GUID, signature_list(certs), DB_ATTRIBUTES)
    if store[first:first + len(var)] != b"\xff" * len(var):
        raise h.VmError(f"{template}: the variable store is not empty")
    store[first:first + len(var)] = var
    out.write_bytes(bytes(store))
    return out


def qemu_args(vars_file: Path) -> list[str]:
    """-drive options: OVMF's code read-only, and this variable store."""
    code, _ = firmware()
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}"]


def efivarfs_module(kernel: Path) -> Path:
    """``efivarfs.ko`` of the package ``kernel`` came from (cached, uncompressed)."""
    info = (kernel.parents[1] / ".package").read_text().split()
    if len(info) != 3:
        raise h.VmError(f"cannot tell which package {kernel} came from")
    name, version, _arch = info
    dest = h.cache_dir() / "uefi" / f"efivarfs_{name}_{version.replace(':', '%3a')}" / "efivarfs.ko"
    with h._lock("efivarfs"):
        if dest.is_file():
            return dest
        with tempfile.TemporaryDirectory(dir=h.cache_dir()) as tmp:
            opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
            h._run(["apt-get", *opts, "-q", "download", f"{name}={version}"], cwd=tmp,
                   what=f"apt-get download {name}")
            (deb,) = Path(tmp).glob("*.deb")
            tree = Path(tmp) / "x"
            h._run(["dpkg-deb", "-x", deb, tree], what=f"dpkg-deb -x {deb.name}")
            found = [p for p in tree.glob("lib/modules/*/kernel/fs/efivarfs/efivarfs.ko*")
                     if re.search(r"\.ko(\.xz)?$", p.name)]
            if len(found) != 1:
                raise h.VmError(f"{deb.name} has no single efivarfs.ko: {found}")
            data = found[0].read_bytes()
            if found[0].suffix == ".xz":
                data = lzma.decompress(data)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp_dest = dest.with_suffix(".part")
            tmp_dest.write_bytes(data)
            os.replace(tmp_dest, dest)
    return dest


def host_binary(g: h.Guest, path: str) -> None:
    """A dynamically linked host program and the libraries ``ldd`` lists, at their paths."""
    binary = shutil.which(path) or path
    found, missing = h._ldd([Path(binary)])
    if missing:
        raise h.VmError(f"{binary}: libraries not found: {missing}")
    for f in (binary, *found.get(Path(binary), [])):
        g.layer.host_path(f)  # with the symlinks on the way (/lib -> usr/lib, lib.so.N -> ...)


def strace() -> str:
    """The host's strace (installed from the system's suite when missing)."""
    if shutil.which("strace") is None:
        h._apt_install(["strace"], "proving pykexec refuses before any kexec system call")
    path = shutil.which("strace")
    if path is None:
        raise h.VmError("strace is not on PATH even after installing it")
    subprocess.run([path, "-V"], check=True, stdout=subprocess.DEVNULL)
    return path
