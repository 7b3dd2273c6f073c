"""Signals: SIGINT/SIGTERM unwind cleanly; a signal during a kernel call is held until it
returns, and then says what the call did.

In process: a fake system call that sends pykexec a signal while it runs.
Out of process: ``pykexec load`` blocked on opening a FIFO given as ``--initrd`` (so
the signal lands during preparation, deterministically), then SIGINT or SIGTERM.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pykexec import api, interrupt, loader
from pykexec.errors import SyscallError
from pykexec.machine.model import Machine

from .fakes import FakeSyscalls
from .test_loader import arm64_image, write


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    interrupt.install()
    yield
    for s, h in saved.items():
        signal.signal(s, h)


class SignalDuringCall(FakeSyscalls):
    """kexec_file_load that receives ``signum`` while it runs (and may then fail)."""

    def __init__(self, signum: int, fail: int | None = None) -> None:
        super().__init__(fail={"kexec_file_load": fail} if fail else {})
        self.signum = signum
        self.finished = False

    def kexec_file_load(self, *args):
        os.kill(os.getpid(), self.signum)
        time.sleep(0.05)  # were the signal not held, its handler would run here
        self.finished = True
        super().kexec_file_load(*args)


def load(tmp_path: Path, fake, **kw):
    sysfs = tmp_path / "sys"
    (sysfs / "kernel").mkdir(parents=True, exist_ok=True)
    return api.load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()), **kw),
                    syscalls=fake, sysfs=sysfs, machine=Machine(arch="arm64"),
                    efivars=tmp_path / "no-efivars")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_during_the_call_is_acted_on_after_it_returns(tmp_path, handlers, signum):
    fake = SignalDuringCall(signum)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(interrupt.Interrupted) as info:
        load(tmp_path, fake)
    assert fake.finished and [c[0] for c in fake.calls] == ["kexec_file_load"]
    e = info.value
    assert e.signum == signum and e.exit_code == 128 + signum
    assert str(e) == (f"interrupted by {signal.Signals(signum).name}; the kernel call had "
                      "completed: the new kernel is loaded (`pykexec unload` removes it)")
    assert set(os.listdir("/proc/self/fd")) == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) & set(interrupt.SIGNALS) == set()


def test_signal_during_a_failed_call_says_nothing_changed(tmp_path, handlers):
    fake = SignalDuringCall(signal.SIGTERM, fail=errno.ENOMEM)
    with pytest.raises(interrupt.Interrupted) as info:
        load(tmp_path, fake, mode="file")
    assert "the kernel call had failed (kexec_file_load: ENOMEM" in str(info.value)
    assert str(info.value).endswith("so nothing was changed")
    assert isinstance(info.value.__context__.__context__, SyscallError)


def test_plain_ctrl_c_handler_is_held_too(tmp_path):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt) as info:
        load(tmp_path, SignalDuringCall(signal.SIGINT))
    assert isinstance(info.value, interrupt.Interrupted) and "new kernel is loaded" in str(info.value)


def test_unload_says_it_unloaded(handlers):
    class Fake(FakeSyscalls):
        def kexec_file_load(self, *args):
            os.kill(os.getpid(), signal.SIGTERM)
            super().kexec_file_load(*args)
    with pytest.raises(interrupt.Interrupted, match="the crash kernel is unloaded"):
        loader.unload(Fake(), crash=True, lockdown=None)


def test_a_handler_that_does_not_raise_lets_the_load_finish(tmp_path):
    seen = []
    old = signal.signal(signal.SIGTERM, lambda n, f: seen.append(n))
    try:
        _, report, _ = load(tmp_path, SignalDuringCall(signal.SIGTERM))
    finally:
        signal.signal(signal.SIGTERM, old)
    assert report.syscall == "kexec_file_load" and seen == [signal.SIGTERM]


def test_ignored_signals_stay_ignored(handlers):
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        interrupt.install()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def test_interrupted_while_waiting_for_the_lock_closes_its_fd(tmp_path, handlers):
    paths = (tmp_path / "lock",)
    with loader.LoadLock(paths=paths):
        before = set(os.listdir("/proc/self/fd"))
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        old = signal.signal(signal.SIGALRM, lambda n, f: os.kill(os.getpid(), signal.SIGTERM))
        try:
            with pytest.raises(interrupt.Interrupted):
                with loader.LoadLock(timeout=5, paths=paths):
                    pass
        finally:
            signal.signal(signal.SIGALRM, old)
        assert set(os.listdir("/proc/self/fd")) == before


# -- the CLI, in a subprocess ------------------------------------------------------------


def _wait_blocked_on_fifo(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until the process sleeps in open() of a FIFO with no writer (fs/pipe.c)."""
    deadline = time.monotonic() + timeout
    wchan = Path(f"/proc/{proc.pid}/wchan")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pykexec exited {proc.returncode} before blocking: "
                                 f"{proc.stderr.read()}")
        try:
            if wchan.read_text().strip() == "wait_for_partner":
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError("pykexec never blocked on the FIFO")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_signal_during_preparation(tmp_path, signum, code):
    image = write(tmp_path, "Image", arm64_image())
    fifo = tmp_path / "initrd.fifo"
    os.mkfifo(fifo)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen([sys.executable, "-m", "pykexec", "load", "--dry-run", str(image),
                             "--initrd", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_blocked_on_fifo(proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err.splitlines() == [f"pykexec: error: interrupted by {signal.Signals(signum).name}"]
    assert out == "" and list(tmpdir.iterdir()) == []
