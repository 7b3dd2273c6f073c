"""One error tree for pykexec.

Every failure the user can cause ends in a :class:`PykexecError`.  Its
``exit_code`` is what the CLI returns: 2 for bad input or usage, 1 for
everything else.  Messages say what was expected and what was found.
"""

from __future__ import annotations

import errno


class PykexecError(Exception):
    """Root of every error pykexec raises on purpose."""

    exit_code = 1


class UsageError(PykexecError):
    """The command line asked for something that cannot be done."""

    exit_code = 2


class FormatError(PykexecError):
    """An image is malformed: names the layer, the field, the offset and why."""

    exit_code = 2

    def __init__(self, layer: str, reason: str, *, field: str | None = None,
                 offset: int | None = None) -> None:
        self.layer = layer
        self.field = field
        self.offset = offset
        self.reason = reason
        where = layer
        if field is not None:
            where += f" {field}"
        if offset is not None:
            where += f" at offset {offset:#x}"
        super().__init__(f"{where}: {reason}")


class LimitExceeded(FormatError):
    """Decompression or nesting would exceed a configured bound."""


class UnknownFormat(FormatError):
    """No registered format accepted the data; carries each format's reason."""

    def __init__(self, reasons: dict[str, str], head: bytes, *, layer: str = "image") -> None:
        self.reasons = reasons
        super().__init__(layer, f"not a known boot image (it starts {head.hex(' ') or 'empty'}); "
                         f"tried {', '.join(reasons)}", field="magic", offset=0)


class NotLoadable(FormatError):
    """The image was understood but holds nothing a kernel loader can take."""



class SyscallError(PykexecError):
    """A system call failed; reads like the call, with its errno and what to do."""

    def __init__(self, call: str, err: int, detail: str, *, advice: str | None = None) -> None:
        self.call = call
        self.errno_value = err
        self.advice = advice
        text = f"{call}: {self.errno_name}: {detail}"
        super().__init__(text + (f"; {advice}" if advice else ""))

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(self.errno_value, str(self.errno_value))


class KernelRefused(SyscallError):
    """The running kernel refused the load for a reason the user must act on (a signature
    under lockdown, a missing capability): a refused load, exit status 2.  The message
    leads with that sentence; the call and its errno follow in parentheses."""

    exit_code = 2

    def __init__(self, call: str, err: int, sentence: str) -> None:
        super().__init__(call, err, errno.errorcode.get(err, str(err)), advice=sentence)
        self.args = (f"{sentence} ({call}: {self.errno_name})",)


class LoadRefused(PykexecError):
    """pykexec refuses a load before any system call (policy, lockdown, bad request)."""

    exit_code = 2


class MachineDescriptionError(PykexecError):
    """A machine description (JSON or an iomem dump) is malformed: names the line or key."""

    exit_code = 2

    def __init__(self, source: str, reason: str, *, line: int | None = None,
                 key: str | None = None) -> None:
        self.source = source
        self.line = line
        self.key = key
        self.reason = reason
        where = source
        if line is not None:
            where += f" line {line}"
        if key is not None:
            where += f" key {key!r}"
        super().__init__(f"{where}: {reason}")


class PlacementError(PykexecError):
    """A load cannot be placed in the machine's memory; the message says what did not fit."""

    exit_code = 2

    def __init__(self, message: str, *, role: str | None = None, errno: str = "EADDRNOTAVAIL") -> None:
        self.role = role
        self.errno = errno
        super().__init__(message)


class SignatureRejected(PykexecError):
    """An image failed signature verification where a signature is required: names the
    image, says why, and what would make it pass."""

    exit_code = 2

    def __init__(self, what: str, reason: str, *, advice: str | None = None,
                 verdict: object = None) -> None:
        self.what = what
        self.reason = reason
        self.advice = advice
        self.verdict = verdict
        super().__init__(f"{what}: signature check failed: {reason}"
                         + (f"; {advice}" if advice else ""))


class EmulationError(PykexecError):
    """An image's EFI stub did not reach the hand-over to the kernel under emulation.

    Says why, where execution stood (``pc``) and the last boot-service calls.
    """

    def __init__(self, reason: str, *, pc: int | None = None,
                 calls: tuple[str, ...] = (), instructions: int | None = None) -> None:
        self.reason = reason
        self.pc = pc
        self.calls = tuple(calls)
        self.instructions = instructions
        text = reason
        if pc is not None:
            text += f" (pc {pc:#x}"
            text += f", after {instructions} instructions)" if instructions is not None else ")"
        if self.calls:
            text += "; last boot-service calls: " + "; ".join(self.calls)
        super().__init__(text)


class EmulationLimit(EmulationError):
    """Emulation hit a configured bound (instructions, guest memory or time)."""


class EmulationFault(EmulationError):
    """The emulated code faulted: an access outside guest RAM or an invalid instruction."""


class StubExited(EmulationError):
    """The stub returned or called Exit() (or ResetSystem) instead of starting the kernel: the
    image is not a kernel that boots this way, which is bad input (exit 2)."""

    exit_code = 2


class StubHalted(EmulationError):
    """The image halted to wait (for a key, a network, a timer) before starting any kernel, as a boot
    loader or firmware application does and a kernel's EFI stub never does: bad input (exit 2)."""

    exit_code = 2


class EmulatorUnavailable(PykexecError):
    """The optional emulator dependency (unicorn) is not installed."""


class UserLoadRefused(LoadRefused):
    """A kexec_load pykexec built breaks a rule the kernel enforces; ``violations`` says which."""

    def __init__(self, message: str, violations: tuple = ()) -> None:
        self.violations = tuple(violations)
        super().__init__(message)


class PurgatoryError(PykexecError):
    """The committed purgatory image is missing, or does not match what this pykexec expects."""
