"""The newc (``070701``) cpio format, written in Python, for initramfs layers.

Layout (the kernel's ``Documentation/driver-api/early-userspace/buffer-format.rst``):
a header of the ASCII magic ``070701`` and 13 eight-digit hex fields (ino, mode,
uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
namesize, check), the NUL-terminated name padded to 4 bytes, the data padded
to 4 bytes; the archive ends with an entry named ``TRAILER!!!``.

The kernel unpacks concatenated archives (compressed or not) in order; a
regular file replaces an earlier one of the same path, a symlink does not
replace a symlink, and a directory entry where a symlink exists replaces the
symlink, which is why guest paths are canonicalised through the host's
symlinked directories (merged-/usr ``/bin`` -> ``usr/bin``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

#: zstd level for compressed layers: <= 19 keeps the window within what the kernel's unzstd accepts
ZSTD_LEVEL = 12


class NewcError(AssertionError):
    """An archive could not be built (a host file vanished or changed)."""


def atomic_write(path: Path, writer) -> Path:
    """Call ``writer(fileobj)`` on a temp file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


class Cpio:
    """An in-order newc (``070701``) archive of directories, files, symlinks and devices.

    Guest paths are canonicalised through the host's symlinked directories
    (``/bin`` -> ``usr/bin`` on merged-/usr Debian), so that an archive never
    emits a directory where the guest has a symlink.  Host files are streamed
    when the archive is written.  Adding a path twice replaces the entry.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: str) -> bool:
        return canon(path) in self._entries

    @property
    def paths(self) -> list[str]:
        return list(self._entries)

    def _parents(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        cur = ""
        for p in parts:
            cur += "/" + p
            if cur not in self._entries:
                self._entries[cur] = ("dir", 0o755, 0)

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = canon(path)
        self._parents(path)
        self._entries[path] = ("dir", mode, 0)

    def data(self, path: str, data: Union[bytes, str], mode: int = 0o644, mtime: int = 0) -> None:
        path = canon(path)
        self._parents(path)
        self._entries.pop(path, None)
        self._entries[path] = ("data", mode, mtime, data.encode() if isinstance(data, str) else bytes(data))

    def file(self, path: str, host: PathLike, mode: Optional[int] = None) -> None:
        """A host file (streamed at write time), with its mode and mtime unless ``mode`` is given."""
        path = canon(path)
        st = os.stat(host)
        self._parents(path)
        self._entries.pop(path, None)
        self._entries[path] = ("file", stat.S_IMODE(st.st_mode) if mode is None else mode,
                               int(st.st_mtime), os.fspath(host), st.st_size)

    def symlink(self, path: str, target: str) -> None:
        path = canon(path)
        self._parents(path)
        self._entries[path] = ("symlink", 0o777, 0, target)

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = canon(path)
        self._parents(path)
        self._entries[path] = ("chr", mode, 0, major, minor)

    def host_path(self, path: PathLike) -> None:
        """Copy a host path (file, symlink or directory entry) at its own path,
        with every symlink met on the way (both the links and their targets)."""
        _add_host_path(self, os.path.abspath(os.fspath(path)), set())

    def write(self, out: BinaryIO) -> None:
        ino = 1
        for path, entry in self._entries.items():
            kind, mode, mtime = entry[0], entry[1], entry[2]
            name = path.lstrip("/").encode()
            rmaj = rmin = 0
            if kind == "dir":
                fmode, size, body = stat.S_IFDIR | mode, 0, None
            elif kind == "data":
                fmode, size, body = stat.S_IFREG | mode, len(entry[3]), entry[3]
            elif kind == "file":
                fmode, size, body = stat.S_IFREG | mode, entry[4], None
            elif kind == "symlink":
                body = entry[3].encode()
                fmode, size = stat.S_IFLNK | 0o777, len(body)
            else:
                fmode, size, body = stat.S_IFCHR | mode, 0, None
                rmaj, rmin = entry[3], entry[4]
            _newc_header(out, ino, fmode, 2 if kind == "dir" else 1, mtime, size, rmaj, rmin, name)
            ino += 1
            if kind == "file":
                copied = 0
                with open(entry[3], "rb") as f:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
                        copied += len(chunk)
                if copied != size:
                    raise NewcError(f"{entry[3]} changed size while being archived")
            elif body is not None:
                out.write(body)
            out.write(b"\0" * (-size % 4))
        _newc_header(out, 0, 0, 1, 0, 0, 0, 0, b"TRAILER!!!")

    def write_file(self, path: Path, *, compress: Union[bool, str]) -> Path:
        """Write the archive to ``path``: ``compress`` is "gzip" (or True), "zstd", or False."""
        method = "gzip" if compress is True else (compress or "none")

        def writer(f):
            if method == "gzip":
                with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
                    self.write(gz)
            elif method == "zstd":
                import zstandard  # a pykexec dependency; the kernel has RD_ZSTD
                # level <= 19 keeps the window within what the kernel's unzstd accepts
                cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
                with cctx.stream_writer(f, closefd=False) as z:
                    self.write(z)
            elif method == "none":
                self.write(f)
            else:
                raise ValueError(f"compression must be gzip, zstd or none, not {compress!r}")
        return atomic_write(path, writer)


def _newc_header(out: BinaryIO, ino: int, mode: int, nlink: int, mtime: int, size: int,
                 rmaj: int, rmin: int, name: bytes) -> None:
    namesize = len(name) + 1
    fields = (ino, mode, 0, 0, nlink, max(0, min(mtime, 0xFFFFFFFF)), size, 0, 0, rmaj, rmin, namesize, 0)
    hdr = b"070701" + b"".join(b"%08X" % v for v in fields) + name + b"\0"
    out.write(hdr + b"\0" * (-len(hdr) % 4))


def canon(path: str) -> str:
    """A guest path with its parent directories resolved through the host's symlinks."""
    path = "/" + path.strip("/")
    parent, base = os.path.split(path)
    cur = "/"
    for comp in [c for c in parent.split("/") if c]:
        nxt = os.path.join(cur, comp)
        cur = os.path.realpath(nxt) if os.path.islink(nxt) else nxt
    return os.path.join(cur, base)


def _add_host_path(cpio: Cpio, path: str, seen: set) -> None:
    if path in seen:
        return
    seen.add(path)
    # symlinked directories on the way
    cur = "/"
    for comp in [c for c in os.path.dirname(path).split("/") if c]:
        nxt = os.path.join(cur, comp)
        if os.path.islink(nxt):
            cpio.symlink(nxt, os.readlink(nxt))
            cur = os.path.realpath(nxt)
            _add_host_path(cpio, cur, seen)
        else:
            cur = nxt
    real = os.path.join(cur, os.path.basename(path))
    if os.path.islink(real):
        target = os.readlink(real)
        cpio.symlink(real, target)
        _add_host_path(cpio, os.path.normpath(os.path.join(os.path.dirname(real), target)), seen)
    elif os.path.isdir(real):
        cpio.dir(real, stat.S_IMODE(os.stat(real).st_mode))
    elif os.path.isfile(real):
        cpio.file(real, real)
    else:
        raise NewcError(f"{path}: not found on the host")
