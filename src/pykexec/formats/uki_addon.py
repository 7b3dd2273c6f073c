"""UKI add-ons (UAPI.5 "PE Addons"): PE images with no ``.linux`` section that
carry at least one of ``.cmdline``, ``.dtb``, ``.dtbauto``, ``.ucode``, ``.initrd``.

Add-ons are applied in file-name order: command lines are appended, ``.ucode``
archives prepended (in reverse order) and ``.initrd`` archives appended to the
UKI's own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import FormatError
from . import pe
from .layer import Buffer, Format, Layer, ignoring_limits
from .uki import read_sections, text

ADDON_SECTIONS = (".cmdline", ".dtb", ".dtbauto", ".ucode", ".initrd")


@dataclass(frozen=True)
class UkiAddon(Layer):
    FORMAT = "uki-addon"
    machine: int = 0
    signature: bool = False
    sections: tuple[str, ...] = ()
    cmdline: str | None = None
    section_table: tuple[pe.PeSection, ...] = ()

    def section(self, name: str) -> memoryview | None:
        for s in self.section_table:
            if s.name == name:
                return pe.section_data(self.data, s, self.FORMAT)
        return None


def probe(data: Buffer) -> bool:
    if not pe.has_pe_header(data):
        return False
    try:
        names = {s.name for s in pe.read_header(data).sections}
    except FormatError:
        return False
    return ".linux" not in names and bool(names & set(ADDON_SECTIONS))


def parse(data: Buffer) -> UkiAddon:
    hdr, table = read_sections(data, "uki-addon")
    addon = UkiAddon(arch=hdr.arch, data=data, machine=hdr.machine, signature=hdr.signed,
                     sections=tuple(s.header.name for s in table),
                     section_table=tuple(s.header for s in table))
    cmdline = addon.section(".cmdline")
    return replace(addon, cmdline=None if cmdline is None else text(cmdline))
FORMAT = Format("uki-addon", probe, ignoring_limits(parse), "a PE image with .cmdline/.dtb/.ucode/.initrd and no .linux")
