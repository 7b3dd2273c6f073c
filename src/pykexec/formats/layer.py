"""The result of parsing one layer of a boot image.

Every format's ``parse`` returns a frozen dataclass derived from :class:`Layer`.
Its public fields are the header fields, named as in the format's
specification; fields marked ``raw`` hold byte buffers and stay out of reports.
A layer that wraps another (a compressed payload, a UKI's ``.linux``) says so
through :meth:`Layer.inner`, and the registry parses that in turn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

from ..limits import Limits

if TYPE_CHECKING:
    from ..errors import NotLoadable

Buffer = bytes | bytearray | memoryview


def raw(default: Any = None) -> Any:
    """A dataclass field that holds bytes: kept out of JSON, repr and equality."""
    return field(default=default, repr=False, compare=False, metadata={"raw": True})


@dataclass(frozen=True)
class Layer:
    """Common shape of a parsed layer: its format name, architecture and bytes."""

    FORMAT: ClassVar[str] = ""
    #: A kernel that a loader takes as it is: kexec_file_load probes it, or a user-mode
    #: load is built from it (a bzImage, an Image, an ELF, a Multiboot kernel).
    KERNEL: ClassVar[bool] = False
    arch: str | None
    data: Buffer = raw()

    @property
    def format(self) -> str:
        """The registry name of this layer's format."""
        return self.FORMAT

    def inner(self) -> Buffer | None:
        """The bytes this layer wraps, to be identified in turn, if any."""
        return None

    def inner_size(self) -> int | None:
        """The size this layer declares for its inner bytes, to cap decompression."""
        return None

    def refusal(self) -> "NotLoadable | None":
        """Why a loader cannot take this layer, saying what it is (an object file,
        firmware, an initramfs); None for a layer a loader may take or look inside."""
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format}
        for f in dataclasses.fields(self):
            if not f.metadata.get("raw"):
                out[f.name] = _jsonable(getattr(self, f.name))
        return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name))
                for f in dataclasses.fields(value) if not f.metadata.get("raw")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value


class Format(NamedTuple):
    """A registry entry: the format's name, its probe, its parser and what the probe needs."""

    name: str
    probe: Callable[[Buffer], bool]
    parse: Callable[[Buffer, Limits], Layer]
    needs: str


def ignoring_limits(parse: Callable[..., Layer]) -> Callable[..., Layer]:
    """Adapt ``parse(data)`` to the registry's ``parse(data, limits)`` call."""
    def call(data: Buffer, limits: Limits) -> Layer:
        del limits
        return parse(data)
    return call
