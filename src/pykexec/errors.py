"""One error tree for pykexec.

Every failure the user can cause ends in a :class:`PykexecError`.  Its
``exit_code`` is what the CLI returns: 2 for bad input or usage, 1 for
everything else.  Messages say what was expected and what was found.
"""

from __future__ import annotations


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

    def __init__(self, reasons: dict[str, str], *, layer: str = "image") -> None:
        self.reasons = reasons
        summary = "; ".join(f"{name}: {why}" for name, why in reasons.items())
        super().__init__(layer, f"no known format accepts it ({summary})")


class NotLoadable(FormatError):
    """The image was understood but holds nothing a kernel loader can take."""
