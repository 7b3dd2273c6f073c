"""Run an emulation in a child process, so that unicorn failing hard is an error, not a crash.

unicorn is QEMU, and QEMU stops the whole process (``abort()``) where it meets
something it never expected: random AArch64 code hits an assertion in its
decoder about once in a thousand programs
(``disas_simd_two_reg_misc_fp16: code should not be reached``).  An image
given to ``pykexec load`` can end up in the emulator, so its code must never
take pykexec down with it.  On systems with ``fork`` the emulation runs in a
child; the parent gets back the result, or the error the child raised, or
an :class:`~pykexec.errors.EmulationError` saying how the child died and the
last firmware calls it made.

The child streams what the callbacks would see (each firmware call, the
progress) and the parent calls them, so callers see no difference.  A signal
that stops the parent (Ctrl-C, SIGTERM) kills the child; the child itself
dies of SIGINT, SIGTERM and SIGHUP as a plain process does.
"""

from __future__ import annotations

import collections
import faulthandler
import os
import pickle
import signal
import traceback
from typing import Any, Callable

from ..errors import EmulationError
from ..backends.linux.signals import SIGNALS, Interrupted

HISTORY = 12


def call(fn: Callable[..., Any], *args: Any, trace: Callable[[str], None] | None = None,
         progress: Callable[..., None] | None = None, **kwargs: Any) -> Any:
    """``fn(*args, trace=..., progress=..., **kwargs)`` in a child process, where there is fork."""
    if not hasattr(os, "fork"):
        return fn(*args, trace=trace, progress=progress, **kwargs)
    r, w = os.pipe()
    _widen(w)
    pid = os.fork()
    if pid == 0:
        _child(r, w, fn, args, kwargs, progress is not None)
    os.close(w)
    done = False
    try:
        with os.fdopen(r, "rb") as pipe:
            result, calls = _receive(pipe, trace, progress)
        _, status = os.waitpid(pid, 0)
        done = True
    finally:
        if not done:
            _kill(pid)
    if result is not _DIED:
        return result
    raise _death(status, calls)


_DIED = object()
PIPE_SIZE = 1 << 20     # Linux's default pipe-max-size: a 60 MiB capture crosses in 0.1 s, not 0.4


def _widen(fd: int) -> None:
    """A larger pipe buffer where the system allows one (fewer switches between the two)."""
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError, AttributeError):
        pass


def _receive(pipe, trace, progress) -> tuple[Any, collections.deque]:
    """The child's messages until its result (raised, if it is an error), or _DIED at EOF."""
    calls: collections.deque[str] = collections.deque(maxlen=HISTORY)
    while True:
        try:
            kind, *body = pickle.load(pipe)
        except EOFError:
            return _DIED, calls
        if kind == "call":
            calls.append(body[0].split("] ", 1)[-1])
            if trace is not None:
                trace(body[0])
        elif kind == "progress":
            progress(*body[0])
        elif kind == "result":
            return body[0], calls
        else:
            raise _rebuild(*body)


def _rebuild(cls: type, args: tuple, attrs: dict, where: str | None) -> BaseException:
    """The child's exception, as the parent's own (without calling its __init__ again)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(attrs)
    if where is not None:
        exc.add_note(f"raised in the emulator's process:\n{where}")
    return exc


def _death(status: int, calls) -> BaseException:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum in SIGNALS:
            return Interrupted(signum)
        name = signal.Signals(signum).name
        why = (f"the emulator's process died of {name}: unicorn (QEMU) stopped on something "
               "the image's code did that it cannot emulate (its own message, if it gave one, "
               "is above)")
    else:
        why = f"the emulator's process exited with status {os.WEXITSTATUS(status)} and no result"
    return EmulationError(why, calls=tuple(calls))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _child(r: int, w: int, fn, args, kwargs, want_progress: bool) -> None:
    """Run ``fn`` and send its result or error; never returns."""
    code = 1
    try:
        os.close(r)
        os.dup2(2, 1)       # what QEMU prints as it aborts must not mix with the parent's output
        faulthandler.disable()      # the parent says how the child died; no Python dump of it
        for signum in SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
        with os.fdopen(w, "wb") as out:
            def send(*message: Any) -> None:
                pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
                out.flush()

            progress = (lambda *a: send("progress", a)) if want_progress else None
            try:
                result = fn(*args, trace=lambda line: send("call", line), progress=progress,
                            **kwargs)
            except Exception as e:  # noqa: BLE001 - every error goes back to the parent
                from ..errors import PykexecError
                where = None if isinstance(e, PykexecError) else traceback.format_exc()
                try:
                    send("error", type(e), e.args, vars(e), where)
                except (pickle.PicklingError, TypeError, AttributeError):
                    send("error", RuntimeError, (f"{type(e).__name__}: {e}",), {}, where)
            else:
                send("result", result)
        code = 0
    finally:
        os._exit(code)
