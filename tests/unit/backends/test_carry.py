"""LUO's ioctl layout and pykexec's carry protocol, against a fake /dev/liveupdate.

The numbers are include/uapi/linux/liveupdate.h's (Linux 7.2), worked out by
hand: ``_IO(0xBA, nr)`` is ``0xBA << 8 | nr``; ``struct
liveupdate_ioctl_create_session`` is u32 + s32 + u8[64] = 72 bytes,
``struct liveupdate_session_preserve_fd`` u32 + s32 + aligned u64 = 16,
``struct liveupdate_session_finish`` u32 + u32 = 8.  The real kernel is in
tests/vm/test_kho.py.
"""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from pykexec import carry
from pykexec.backends.linux import luo
from pykexec.errors import LoadRefused, PykexecError, SyscallError, UsageError


def test_ioctl_numbers_and_sizes_are_the_uapi_headers():
    assert (luo.CREATE_SESSION, luo.RETRIEVE_SESSION) == (0xBA00, 0xBA01)
    assert (luo.SESSION_PRESERVE_FD, luo.SESSION_RETRIEVE_FD, luo.SESSION_FINISH) == (0xBA40, 0xBA41, 0xBA42)
    assert (luo.SESSION_ARG.size, luo.FD_ARG.size, luo.FINISH_ARG.size) == (72, 16, 8)


class FakeKernel:
    """Sessions as LUO keeps them: outgoing ones become incoming at the "reboot"."""

    def __init__(self) -> None:
        self.outgoing: dict[str, dict[int, int]] = {}
        self.incoming: dict[str, dict[int, int]] = {}
        self.finished: list[str] = []

    def reboot(self) -> None:
        self.incoming, self.outgoing = self.outgoing, {}


class FakeSession:
    def __init__(self, kernel: FakeKernel, name: str, files: dict[int, int], incoming: bool) -> None:
        self.kernel, self.name, self.files, self.incoming = kernel, name, files, incoming

    def preserve(self, fd: int, token: int) -> None:
        self.files[token] = os.dup(fd)  # the kernel holds the file itself

    def retrieve(self, token: int) -> int:
        return os.dup(self.files[token])

    def finish(self) -> None:
        self.kernel.finished.append(self.name)

    def close(self) -> None:
        pass


class FakeLiveUpdate:
    kernel = FakeKernel()

    def __init__(self, device) -> None:
        pass

    def create_session(self, name: str) -> FakeSession:
        return FakeSession(self.kernel, name, self.kernel.outgoing.setdefault(name, {}), False)

    def retrieve_session(self, name: str) -> FakeSession:
        if name not in self.kernel.incoming:
            raise SyscallError("LIVEUPDATE_IOCTL_RETRIEVE_SESSION", errno.ENOENT, "No such file or directory")
        return FakeSession(self.kernel, name, self.kernel.incoming.pop(name), True)

    def close(self) -> None:
        pass


@pytest.fixture
def fake_luo(tmp_path, monkeypatch):
    FakeLiveUpdate.kernel = FakeKernel()
    monkeypatch.setattr(luo, "LiveUpdate", FakeLiveUpdate)
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "liveupdate").touch()
    return dev


def test_carry_round_trip_through_the_manifest(fake_luo, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(3 << 20))
    b.write_bytes(b"")
    held = carry.preserve({"state": a, "empty.bin": b}, dev=fake_luo)
    assert [f.token for f in held.files] == [1, 2]
    FakeLiveUpdate.kernel.reboot()
    held.close()
    into = tmp_path / "run"
    files = carry.carried(dev=fake_luo, into=into)
    assert [(f.name, f.size, f.sha256) for f in files] == [
        ("state", 3 << 20, hashlib.sha256(a.read_bytes()).hexdigest()),
        ("empty.bin", 0, hashlib.sha256(b"").hexdigest())]
    assert FakeLiveUpdate.kernel.finished == [carry.SESSION]
    out = carry.retrieve("state", tmp_path / "out", dev=fake_luo, into=into)
    assert out.read_bytes() == a.read_bytes()
    assert carry.carried(dev=fake_luo, into=into) == files  # again, from `into`: LUO is not asked twice
    with pytest.raises(UsageError, match="no carried file 'nope'; carried: state, empty.bin"):
        carry.retrieve("nope", dev=fake_luo, into=into)


def test_the_preserved_memfds_are_sealed(fake_luo, tmp_path):
    import fcntl
    (tmp_path / "a").write_bytes(b"x")
    held = carry.preserve({"a": tmp_path / "a"}, dev=fake_luo)
    fd = FakeLiveUpdate.kernel.outgoing[carry.SESSION][1]
    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & carry.SEALS == carry.SEALS
    held.close()


def test_nothing_carried(fake_luo, tmp_path):
    with pytest.raises(LoadRefused, match="nothing was carried"):
        carry.carried(dev=fake_luo, into=tmp_path / "run")


def test_a_corrupted_file_is_refused(fake_luo, tmp_path):
    (tmp_path / "a").write_bytes(b"hello")
    carry.preserve({"a": tmp_path / "a"}, dev=fake_luo)
    files = FakeLiveUpdate.kernel.outgoing[carry.SESSION]
    bad = os.memfd_create("bad")
    os.write(bad, b"jello")
    files[1] = bad
    FakeLiveUpdate.kernel.reboot()
    with pytest.raises(PykexecError, match="arrived as 5 bytes with SHA-256"):
        carry.carried(dev=fake_luo, into=tmp_path / "run")


@pytest.mark.parametrize("spec, error", [
    ("state", "expected NAME=FILE"), ("=f", "NAME must be"), ("../x=f", "NAME must be"),
    (".hidden=f", "NAME must be"), ("a=", "expected NAME=FILE")])
def test_bad_carry_specs(spec, error):
    with pytest.raises(UsageError, match=error):
        carry.parse_carry(spec)


def test_luo_absent_says_why(tmp_path):
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/osrelease").write_text("7.2.0\n")
    (proc / "cmdline").write_text("console=ttyS0\n")
    (tmp_path / "boot").mkdir()
    dev = tmp_path / "dev"
    dev.mkdir()
    import gzip
    (proc / "config.gz").write_bytes(gzip.compress(b"CONFIG_KEXEC_FILE=y\n"))
    assert "CONFIG_LIVEUPDATE" in carry.luo_absent_reason(dev=dev, proc=proc, sys=sys_)
    (proc / "config.gz").write_bytes(gzip.compress(b"CONFIG_KEXEC_HANDOVER=y\nCONFIG_LIVEUPDATE=y\n"))
    assert "boot with kho=on" in carry.luo_absent_reason(dev=dev, proc=proc, sys=sys_)
    (proc / "cmdline").write_text("kho=on\n")
    assert "liveupdate=on" in carry.luo_absent_reason(dev=dev, proc=proc, sys=sys_)


def test_cli_says_why_in_one_line_when_luo_is_absent(monkeypatch, capsys):
    from pykexec import cli
    monkeypatch.setattr(carry, "luo_absent_reason", lambda **_: "/dev/liveupdate is absent: boot with liveupdate=on")
    assert cli.main(["carried"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["pykexec: error: cannot receive carried files: /dev/liveupdate is absent: boot with liveupdate=on"]
