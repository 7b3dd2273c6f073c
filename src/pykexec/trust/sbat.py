"""SBAT: the ``.sbat`` section of UEFI images, and shim's revocation level.

Specification: rhboot/shim ``SBAT.md``.  The section is UTF-8 CSV, one
component a line::

    component_name,component_generation,vendor_name,vendor_package_name,vendor_version,vendor_url

NUL-padded to the section's size.  The first line is normally
``sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md``.

shim publishes the revocation level it enforces as the runtime variable
``SbatLevelRT-605dab50-e046-4300-abb6-3dd810dd8b23``: a first line
``sbat,1,<datestamp>`` and then ``component_name,minimum_generation`` lines.
An image whose component has a lower generation than the level names is
revoked (shim ``verify_sbat``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import FormatError
from ..formats import pe

LAYER = "sbat"
FIELDS = ("component", "generation", "vendor", "package", "version", "url")


@dataclass(frozen=True)
class SbatEntry:
    """One line of a ``.sbat`` section."""

    component: str
    generation: int
    vendor: str = ""
    package: str = ""
    version: str = ""
    url: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return ",".join(str(getattr(self, f)) for f in FIELDS)


def _lines(data: bytes, source: str):
    text = bytes(data).split(b"\0", 1)[0]
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(source, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    for number, line in enumerate(decoded.splitlines(), 1):
        if line.strip():
            yield number, [f.strip() for f in line.split(",")]


def _generation(value: str, source: str, number: int) -> int:
    if not value.isdigit():
        raise FormatError(source, f"line {number}: generation {value!r} is not a number",
                          field="component_generation")
    return int(value)


def parse(data: bytes, *, source: str = LAYER) -> tuple[SbatEntry, ...]:
    """The entries of a ``.sbat`` section's contents."""
    out = []
    for number, fields in _lines(data, source):
        if len(fields) < 2 or not fields[0]:
            raise FormatError(source, f"line {number}: expected at least component_name and "
                              f"component_generation, found {','.join(fields)!r}")
        extra = (fields[2:] + [""] * 4)[:4]
        out.append(SbatEntry(fields[0], _generation(fields[1], source, number), *extra))
    return tuple(out)


def parse_level(data: bytes, *, source: str = "SbatLevelRT") -> dict[str, int]:
    """shim's revocation level: component name → minimum generation."""
    level = {}
    for number, fields in _lines(data, source):
        if len(fields) < 2:
            raise FormatError(source, f"line {number}: expected component,generation")
        level[fields[0]] = _generation(fields[1], source, number)
    return level


def of_image(data: bytes) -> tuple[SbatEntry, ...] | None:
    """The ``.sbat`` entries of a PE image, or None when it has no ``.sbat`` section."""
    header = pe.read_header(data, LAYER)
    section = next((s for s in header.sections if s.name == ".sbat"), None)
    if section is None:
        return None
    return parse(bytes(pe.section_data(data, section, LAYER)), source=".sbat section")


def revoked(entries: tuple[SbatEntry, ...], level: dict[str, int]) -> list[str]:
    """Why ``entries`` fall below ``level`` (empty when they do not)."""
    out = []
    for e in entries:
        need = level.get(e.component)
        if need is not None and e.generation < need:
            out.append(f"SBAT component {e.component!r} is generation {e.generation}, "
                       f"the machine's SbatLevelRT requires {need}")
    return out
