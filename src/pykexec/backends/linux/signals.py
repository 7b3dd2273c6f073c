"""Signals: SIGINT, SIGTERM and SIGHUP unwind pykexec cleanly, and never split a kernel call.

* The CLI installs a :class:`Handler` for the three signals.  Until a kernel
  call has changed what is loaded, a signal raises :class:`Interrupted` (a
  ``KeyboardInterrupt``): SIGTERM unwinds exactly like Ctrl-C, ``finally``
  blocks close files and memfds and release the load lock, and the CLI prints
  one line and exits with 128 + the signal number (130, 143, 129).  A signal
  the caller ignores (``nohup``, a background job) stays ignored.
* :func:`kernel_call` blocks the three signals while one system call changes
  what is loaded (kexec_file_load, kexec_load).  The kernel does each call
  completely or not at all, so nothing is ever half-loaded, and pykexec
  always knows which it was:

  - the call failed: the held signal is delivered then, and the
    :class:`Interrupted` says nothing was changed;
  - the call succeeded: under the CLI's :class:`Handler`, the command is
    past the point of no return, so signals from then on are only recorded;
    the command finishes and prints what it did, and :meth:`Handler.finish`
    then exits 128 + N with one line saying what was done.  Under any other
    handler (the API in someone's program), the signal is delivered after the
    call, and if the handler raises ``KeyboardInterrupt``, an
    :class:`Interrupted` saying what was done takes its place.

Only the stdlib's ``signal`` is imported here, so the CLI can install its
handler before anything heavy loads.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal stopped pykexec.  ``state`` says what it leaves behind where that is known
    (the signal came during or after a kernel call); ``exit_code`` is 128 + the signal."""

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


class Handler:
    """The CLI's handler for SIGINT, SIGTERM and SIGHUP.

    Raises :class:`Interrupted` until :func:`kernel_call` reports that a call
    has completed (``committed``); after that it records the first signal
    (``pending``) for :meth:`finish`.
    """

    def __init__(self) -> None:
        self.committed: str | None = None
        self.pending: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.committed is None:
            raise Interrupted(signum)
        if self.pending is None:
            self.pending = signum

    def finish(self, code: int) -> int:
        """The command's exit code, or 128 + N and one line if a signal came after the commit."""
        if self.pending is None:
            return code
        print(f"pykexec: error: {Interrupted(self.pending, self.committed)}", file=sys.stderr)
        return 128 + self.pending


def install() -> Handler:
    """Install a :class:`Handler` for the signals that are not ignored (main thread only)."""
    handler = Handler()
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)
    return handler


def describe(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The CLI's message and exit code for an interruption (plain Ctrl-C included)."""
    if isinstance(exc, Interrupted):
        return str(exc), exc.exit_code
    return "interrupted by SIGINT", 128 + signal.SIGINT


@contextlib.contextmanager
def kernel_call(done: str) -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while the body makes one kernel call.

    ``done`` says what the call did when it succeeds ("the new kernel is
    loaded").  See the module docstring for what happens to a held signal.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    outcome = done
    try:
        yield
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if isinstance(handler, Handler):
                handler.committed = done
    except BaseException as e:
        outcome = f"the kernel call had failed ({e}), so nothing was changed"
        raise
    finally:
        try:
            # CPython runs the handlers of the signals this unblocks before it returns
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except KeyboardInterrupt as e:
            raise Interrupted(getattr(e, "signum", signal.SIGINT), outcome) from e
