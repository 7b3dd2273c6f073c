"""Signals: SIGINT, SIGTERM and SIGHUP unwind pykexec cleanly, and never split a kernel call.

* The CLI turns each of these signals into :class:`Interrupted` (a
  ``KeyboardInterrupt``), so SIGTERM unwinds exactly like Ctrl-C: ``finally``
  blocks close files and memfds and release the load lock, and the CLI
  prints one line and exits with 128 + the signal number (130, 143, 129).
  A signal the caller ignores (``nohup``, a background job) stays ignored.
* :func:`kernel_call` blocks the three signals while one system call changes
  what is loaded (kexec_file_load, kexec_load).  The kernel does each call
  completely or not at all, so nothing can be half-loaded; holding the signal
  until the call returns lets pykexec say which it was: the
  :class:`Interrupted` raised after the call carries ``state``.

Only this stdlib is imported here, so the CLI can install its handlers before
anything heavy loads.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal stopped pykexec.  ``state`` says what it leaves behind, where that is known
    (a signal held during a kernel call); ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, state: str | None = None) -> None:
        super().__init__(signum, state)
        self.signum = signum
        self.state = state

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        text = f"interrupted by {signal.Signals(self.signum).name}"
        return f"{text}; {self.state}" if self.state else text


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only),
    except where the signal is ignored."""
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise)


def describe(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The CLI's message and exit code for an interruption (plain Ctrl-C included)."""
    if isinstance(exc, Interrupted):
        return str(exc), exc.exit_code
    return "interrupted by SIGINT", 128 + signal.SIGINT


@contextlib.contextmanager
def kernel_call(done: str) -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while the body makes one kernel call.

    A signal that arrived meanwhile is delivered when the call has returned:
    its handler runs then, and if it raises (``KeyboardInterrupt``,
    :class:`Interrupted`), an :class:`Interrupted` that says what the call did
    takes its place: ``done`` when it succeeded, "nothing was changed" when it
    failed (the original error is its ``__context__``).
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    outcome = done
    try:
        yield
    except BaseException as e:
        outcome = f"the kernel call had failed ({e}), so nothing was changed"
        raise
    finally:
        try:
            # CPython runs the handlers of signals this unblocks before it returns
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except KeyboardInterrupt as e:
            raise Interrupted(getattr(e, "signum", signal.SIGINT), outcome) from e
