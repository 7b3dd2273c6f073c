"""The Live Update Orchestrator's ioctls (``/dev/liveupdate``): sessions of preserved files.

The interface is Linux 7.2's ``include/uapi/linux/liveupdate.h``.  Every ioctl
is ``_IO(0xBA, nr)`` (no size in the number); its argument starts with a u32
``size`` of the structure, and the kernel answers by writing the structure
back (``luo_ucmd_respond``).  Only one process may have ``/dev/liveupdate``
open (``luo_open``: EBUSY).  A session is a named set of preserved files:

* ``LIVEUPDATE_IOCTL_CREATE_SESSION`` (``{u32 size; s32 fd; u8 name[64]}``):
  a new outgoing session; its fd must stay open until
  ``reboot(LINUX_REBOOT_CMD_KEXEC)``, which serialises every open session
  (``liveupdate_reboot``); closing it first unpreserves its files.
* ``LIVEUPDATE_SESSION_PRESERVE_FD`` (``{u32 size; s32 fd; u64 token}``):
  preserve a file (a memfd: ``memfd_luo_can_preserve`` wants a shmem file
  with no link) under a token unique in the session.
* in the next kernel, ``LIVEUPDATE_IOCTL_RETRIEVE_SESSION`` by name (once:
  EINVAL after), ``LIVEUPDATE_SESSION_RETRIEVE_FD`` by token, and
  ``LIVEUPDATE_SESSION_FINISH`` (``{u32 size; u32 reserved}``), which hands
  the files' memory back to the kernel; closing a retrieved session finishes
  it too (``luo_session_release``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ...errors import SyscallError

DEVICE = Path("/dev/liveupdate")
IOCTL_TYPE = 0xBA
SESSION_NAME_LENGTH = 64  # LIVEUPDATE_SESSION_NAME_LENGTH, with the terminating NUL


def _io(nr: int) -> int:
    """``_IO(LIVEUPDATE_IOCTL_TYPE, nr)``."""
    return (IOCTL_TYPE << 8) | nr


CREATE_SESSION = _io(0x00)
RETRIEVE_SESSION = _io(0x01)
SESSION_PRESERVE_FD = _io(0x40)
SESSION_RETRIEVE_FD = _io(0x41)
SESSION_FINISH = _io(0x42)

SESSION_ARG = struct.Struct(f"<Ii{SESSION_NAME_LENGTH}s")   # create_session, retrieve_session
FD_ARG = struct.Struct("<IiQ")                                # session_preserve_fd, session_retrieve_fd
FINISH_ARG = struct.Struct("<II")                             # session_finish


def _ioctl(fd: int, request: int, arg: bytearray, call: str) -> bytearray:
    try:
        fcntl.ioctl(fd, request, arg, True)
    except OSError as e:
        raise SyscallError(call, e.errno or errno.EIO, os.strerror(e.errno or errno.EIO)) from None
    return arg


@dataclass
class Session:
    """An open LUO session file descriptor."""

    fd: int
    name: str

    def preserve(self, fd: int, token: int) -> None:
        _ioctl(self.fd, SESSION_PRESERVE_FD, bytearray(FD_ARG.pack(FD_ARG.size, fd, token)),
               f"LIVEUPDATE_SESSION_PRESERVE_FD({self.name}, token {token})")

    def retrieve(self, token: int) -> int:
        """The preserved file of ``token``, as a new descriptor (close-on-exec)."""
        out = _ioctl(self.fd, SESSION_RETRIEVE_FD, bytearray(FD_ARG.pack(FD_ARG.size, -1, token)),
                     f"LIVEUPDATE_SESSION_RETRIEVE_FD({self.name}, token {token})")
        return FD_ARG.unpack(out)[1]

    def finish(self) -> None:
        _ioctl(self.fd, SESSION_FINISH, bytearray(FINISH_ARG.pack(FINISH_ARG.size, 0)),
               f"LIVEUPDATE_SESSION_FINISH({self.name})")

    def close(self) -> None:
        os.close(self.fd)


class LiveUpdate:
    """``/dev/liveupdate``, opened (exclusively) for the life of this object."""

    def __init__(self, device: Path = DEVICE) -> None:
        try:
            self.fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise SyscallError(f"open({device})", e.errno or errno.EIO, os.strerror(e.errno or errno.EIO),
                               advice="another process holds it (only one may)" if e.errno == errno.EBUSY
                               else None) from None

    def _session(self, request: int, name: str, call: str) -> Session:
        raw = name.encode()
        if not raw or len(raw) >= SESSION_NAME_LENGTH:
            raise ValueError(f"a LUO session name is 1 to {SESSION_NAME_LENGTH - 1} bytes: {name!r}")
        out = _ioctl(self.fd, request, bytearray(SESSION_ARG.pack(SESSION_ARG.size, -1, raw)),
                     f"{call}({name})")
        return Session(SESSION_ARG.unpack(out)[1], name)

    def create_session(self, name: str) -> Session:
        return self._session(CREATE_SESSION, name, "LIVEUPDATE_IOCTL_CREATE_SESSION")

    def retrieve_session(self, name: str) -> Session:
        return self._session(RETRIEVE_SESSION, name, "LIVEUPDATE_IOCTL_RETRIEVE_SESSION")

    def close(self) -> None:
        os.close(self.fd)
