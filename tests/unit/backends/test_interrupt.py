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

from pykexec import api
from pykexec.backends.linux import control, policy
from pykexec.backends.linux import signals as interrupt
from pykexec.errors import SyscallError
from pykexec.machine.model import Machine

from .fakes import FakeSyscalls, open_fds
from .test_loader import arm64_image, write


def _default_signals() -> None:
    """Python's own start-up dispositions.  A test run started in the background
    (``cmd &`` in a script, nohup) inherits SIGINT (and maybe SIGHUP) ignored, and
    pykexec rightly leaves ignored signals ignored; these tests are about the others."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _child_default_signals() -> None:
    for s in interrupt.SIGNALS:
        signal.signal(s, signal.SIG_DFL)   # the child's Python then installs its SIGINT handler


@pytest.fixture(autouse=True)
def default_signals():
    saved = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    _default_signals()
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.fixture
def handlers():
    """The CLI's handler, installed as main() installs it; the old handlers come back after."""
    saved = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    yield interrupt.install()
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


def load(tmp_path: Path, fake, *, dry_run: bool = False, **kw):
    sysfs = tmp_path / "sys"
    (sysfs / "kernel").mkdir(parents=True, exist_ok=True)
    return api.load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()), **kw),
                    syscalls=fake, sysfs=sysfs, machine=Machine(arch="arm64"),
                    efivars=tmp_path / "no-efivars", dry_run=dry_run)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_cli_signal_during_the_call_lets_the_command_finish_then_exits_128_plus_n(
        tmp_path, handlers, signum, capsys):
    fake = SignalDuringCall(signum)
    before = open_fds()
    _, report, _ = load(tmp_path, fake)
    assert fake.finished and report.syscall == "kexec_file_load"
    assert handlers.pending == signum
    os.kill(os.getpid(), signal.SIGTERM)  # later signals are only recorded too: the load is done
    assert handlers.finish(0) == 128 + signum
    assert capsys.readouterr().err == (
        f"pykexec: error: interrupted by {signal.Signals(signum).name}; the kernel call had "
        "completed: the new kernel is loaded (`pykexec unload` removes it)\n")
    assert open_fds() <= before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) & set(interrupt.SIGNALS) == set()


def test_cli_signal_before_the_call_unwinds(tmp_path, handlers):
    class Early(FakeSyscalls):
        def kexec_file_load(self, *args):
            raise AssertionError("the kernel call must not happen")
    opts = api.LoadOptions(image=write(tmp_path, "I", arm64_image()))
    (tmp_path / "sys").mkdir()
    old = signal.signal(signal.SIGALRM, lambda n, f: os.kill(os.getpid(), signal.SIGTERM))
    signal.setitimer(signal.ITIMER_REAL, 0.001)
    try:
        with pytest.raises(interrupt.Interrupted) as info:
            while True:  # the signal lands somewhere in preparation, never in the call
                api.load(opts, syscalls=Early(), sysfs=tmp_path / "sys", dry_run=True,
                         machine=Machine(arch="arm64"), efivars=tmp_path / "no-efivars")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert str(info.value) == "interrupted by SIGTERM" and info.value.exit_code == 143
    assert handlers.committed is None and handlers.finish(0) == 0
    # (no fd check here: CPython may run the handler right after os.open() returns, before
    # the descriptor is stored anywhere; the CLI exits then, and the tests below and in
    # test_kernel_refused.py check the deterministic paths)


def test_signal_during_a_failed_call_says_nothing_changed(tmp_path, handlers):
    fake = SignalDuringCall(signal.SIGTERM, fail=errno.ENOMEM)
    with pytest.raises(interrupt.Interrupted) as info:
        load(tmp_path, fake, mode="file")
    assert "the kernel call had failed (kexec_file_load: ENOMEM" in str(info.value)
    assert str(info.value).endswith("so nothing was changed")
    assert isinstance(info.value.__context__.__context__, SyscallError)
    assert handlers.committed is None


def test_api_under_plain_ctrl_c_handler_raises_after_the_call_saying_what_was_done(tmp_path):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    fake = SignalDuringCall(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        load(tmp_path, fake)
    assert fake.finished and isinstance(info.value, interrupt.Interrupted)
    assert "new kernel is loaded" in str(info.value)


def test_api_under_a_raising_sigterm_handler(tmp_path):
    def handler(n, f):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(interrupt.Interrupted, match="the crash kernel is loaded"):
            load(tmp_path, SignalDuringCall(signal.SIGTERM), crash=True)
    finally:
        signal.signal(signal.SIGTERM, old)


def test_unload_reports_it_unloaded(handlers, capsys):
    class Fake(FakeSyscalls):
        def kexec_file_load(self, *args):
            os.kill(os.getpid(), signal.SIGTERM)
            super().kexec_file_load(*args)
    assert control.unload(Fake(), crash=True, lockdown=None) == "kexec_file_load"
    assert handlers.finish(0) == 143
    assert "the crash kernel is unloaded" in capsys.readouterr().err


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
    with policy.LoadLock(paths=paths):
        before = open_fds()
        old = signal.signal(signal.SIGALRM, lambda n, f: os.kill(os.getpid(), signal.SIGTERM))
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            with pytest.raises(interrupt.Interrupted):
                with policy.LoadLock(timeout=5, paths=paths):
                    pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert open_fds() <= before


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
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_child_default_signals)
    try:
        _wait_blocked_on_fifo(proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err.splitlines() == [f"pykexec: error: interrupted by {signal.Signals(signum).name}"]
    assert out == "" and list(tmpdir.iterdir()) == []
