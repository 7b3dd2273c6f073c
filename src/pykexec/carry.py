"""Files carried across a kexec in RAM, through the Live Update Orchestrator (LUO).

Before the reboot (:func:`preserve`, behind ``pykexec exec --carry NAME=FILE``):
each file is copied into a sealed memfd and preserved, under token 1, 2, ...,
in one LUO session named :data:`SESSION`; token 0 is a memfd holding the
manifest (JSON: each file's name, token, size and SHA-256).  The session's
descriptor must stay open through ``reboot(LINUX_REBOOT_CMD_KEXEC)``: the
kernel serialises open sessions then, and unpreserves a session that is
closed before.  So the process that preserves is the one that reboots.

In the next kernel (:func:`carried`, behind ``pykexec carried``): a session
can be retrieved only once, and closing it finishes it (the kernel takes the
memory back), so the first call retrieves every file, checks it against the
manifest, writes it under :data:`RECEIVED` (``/run``, a tmpfs: still RAM),
and finishes the session; later calls, and :func:`retrieve`, read from
there, as often as wanted.

    >>> from pykexec import carry
    >>> carry.carried()                      # in the new kernel
    [CarriedFile(name='state', size=4194304, sha256='...', token=1)]
    >>> carry.retrieve("state", "out")
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from .errors import LoadRefused, PykexecError, SyscallError, UsageError

#: the LUO session pykexec's carried files travel in
SESSION = "pykexec-carry"
MANIFEST_TOKEN = 0
#: where the new kernel's received files are kept (tmpfs on a systemd system, rootfs in an initramfs)
RECEIVED = Path("/run/pykexec/carried")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}")
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
CHUNK = 1 << 20


@dataclass(frozen=True)
class CarriedFile:
    """One carried file, as the manifest describes it."""

    name: str
    size: int
    sha256: str
    token: int


def parse_carry(spec: str) -> tuple[str, str]:
    """``NAME=FILE`` of ``--carry``: NAME becomes a file name in the next kernel, so it is one."""
    name, sep, path = spec.partition("=")
    if not sep or not path:
        raise UsageError(f"--carry {spec!r}: expected NAME=FILE")
    if not NAME.fullmatch(name):
        raise UsageError(f"--carry {spec!r}: NAME must be 1 to 63 of A-Z a-z 0-9 _ . + - "
                         "(not starting with . + -)")
    return name, path


def luo_absent_reason(*, dev: Path = Path("/dev"), proc: Path = Path("/proc"),
                      sys: Path = Path("/sys")) -> str | None:
    """None when ``/dev/liveupdate`` exists; else why it does not, in one sentence."""
    if (dev / "liveupdate").exists():
        return None
    from .machine.snapshot import kernel_config, kho_state
    config = kernel_config(proc=proc)
    if config and config.get("CONFIG_LIVEUPDATE") != "y":
        return "the running kernel has no Live Update Orchestrator (CONFIG_LIVEUPDATE), so /dev/liveupdate is absent"
    active, _ = kho_state(proc=proc, sys=sys)
    if active is False:
        return ("Kexec HandOver is off (boot with kho=on), and the Live Update Orchestrator needs it: "
                "/dev/liveupdate is absent")
    return "/dev/liveupdate is absent: boot the running kernel with kho=on liveupdate=on"


def _open_luo(dev: Path, doing: str):
    from .backends.linux.luo import LiveUpdate
    reason = luo_absent_reason(dev=dev)
    if reason is not None:
        raise LoadRefused(f"{doing}: {reason}")
    return LiveUpdate(dev / "liveupdate")


class Preserved:
    """The open LUO device, session and memfds: keep this object until the reboot."""

    def __init__(self, luo, session, fds: list[int], files: list[CarriedFile]) -> None:
        self.luo, self.session, self.fds, self.files = luo, session, fds, files

    def close(self) -> None:
        """Give up (before a reboot): closing the session unpreserves its files."""
        for fd in self.fds:
            os.close(fd)
        self.session.close()
        self.luo.close()


def preserve(files: Mapping[str, str | Path], *, dev: Path = Path("/dev")) -> Preserved:
    """Preserve ``{name: path}`` in a new LUO session; the reboot must follow with it still open."""
    luo = _open_luo(dev, "cannot carry files across kexec")
    fds: list[int] = []
    try:
        session = luo.create_session(SESSION)
    except BaseException:
        luo.close()
        raise
    out = Preserved(luo, session, fds, [])
    try:
        for token, (name, path) in enumerate(files.items(), start=1):
            fd, size, digest = _memfd_of(name, Path(path))
            fds.append(fd)
            session.preserve(fd, token)
            out.files.append(CarriedFile(name, size, digest, token))
        manifest = json.dumps({"files": [asdict(f) for f in out.files]}).encode()
        fd, _, _ = _memfd_from(SESSION + ".manifest", [manifest])
        fds.append(fd)
        session.preserve(fd, MANIFEST_TOKEN)
    except BaseException:
        out.close()
        raise
    return out


def _memfd_of(name: str, path: Path) -> tuple[int, int, str]:
    with open(path, "rb") as f:
        return _memfd_from(name, iter(lambda: f.read(CHUNK), b""))


def _memfd_from(name: str, chunks) -> tuple[int, int, str]:
    """A sealed memfd holding the chunks: (fd, size, sha256).  memfd_luo restores the seals."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    h, size = hashlib.sha256(), 0
    try:
        for chunk in chunks:
            h.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd, size, h.hexdigest()


def _read_fd(fd: int):
    """The chunks of a retrieved memfd from its start (its file position is the preserved one)."""
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        offset += len(chunk)
        yield chunk


def carried(*, dev: Path = Path("/dev"), into: Path = RECEIVED) -> list[CarriedFile]:
    """The files carried into this kernel.  The first call takes them from LUO into ``into``
    and finishes the session; later calls find them there and do not ask LUO again."""
    manifest = into / "manifest.json"
    if manifest.exists():
        return _manifest(manifest.read_bytes(), str(manifest))
    luo = _open_luo(dev, "cannot receive carried files")
    try:
        try:
            session = luo.retrieve_session(SESSION)
        except SyscallError as e:
            if e.errno_value == errno.ENOENT:
                raise LoadRefused(f"nothing was carried: the previous kernel preserved no LUO session "
                                  f"{SESSION!r} (and {into} holds none received before)") from None
            raise
        try:
            files = _take(session, into)
            session.finish()
        finally:
            session.close()
    finally:
        luo.close()
    return files


def _take(session, into: Path) -> list[CarriedFile]:
    fd = session.retrieve(MANIFEST_TOKEN)
    try:
        raw = b"".join(_read_fd(fd))
    finally:
        os.close(fd)
    files = _manifest(raw, f"LUO session {SESSION!r} token {MANIFEST_TOKEN}")
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    for f in files:
        _copy_out(session, f, into / f.name)
    tmp = into / ".manifest.json"
    tmp.write_bytes(raw)
    os.replace(tmp, into / "manifest.json")
    return files


def _copy_out(session, f: CarriedFile, dest: Path) -> None:
    fd = session.retrieve(f.token)
    h, size = hashlib.sha256(), 0
    try:
        with open(dest, "wb") as out:
            for chunk in _read_fd(fd):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
    finally:
        os.close(fd)
    if (size, h.hexdigest()) != (f.size, f.sha256):
        dest.unlink()
        raise PykexecError(f"carried file {f.name!r} (token {f.token}) arrived as {size} bytes with SHA-256 "
                           f"{h.hexdigest()}, but was preserved as {f.size} bytes with {f.sha256}")


def _manifest(raw: bytes, where: str) -> list[CarriedFile]:
    try:
        entries = json.loads(raw)["files"]
        files = [CarriedFile(str(e["name"]), int(e["size"]), str(e["sha256"]), int(e["token"])) for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise PykexecError(f"{where}: not a pykexec carry manifest ({e})") from None
    for f in files:
        if not NAME.fullmatch(f.name):
            raise PykexecError(f"{where}: file name {f.name!r} is not a plain name")
    return files


def retrieve(name: str, dest: str | Path | None = None, *, dev: Path = Path("/dev"),
             into: Path = RECEIVED) -> Path:
    """The received file ``name`` (copied to ``dest`` when given): its path."""
    files = carried(dev=dev, into=into)
    if name not in {f.name for f in files}:
        raise UsageError(f"no carried file {name!r}; carried: {', '.join(f.name for f in files) or 'none'}")
    src = into / name
    if dest is None:
        return src
    with open(src, "rb") as i, open(dest, "wb") as o:
        while chunk := i.read(CHUNK):
            o.write(chunk)
    return Path(dest)
