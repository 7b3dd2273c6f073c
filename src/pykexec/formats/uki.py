"""Unified Kernel Images: UAPI.5 (uapi-group specifications, unified_kernel_image.md).

A UKI is a PE/COFF image with a ``.linux`` section.  Sections before the first
``.profile`` section form the base profile; each ``.profile`` section starts
profile @0, @1, ...  "Sections associated with specific profiles
comprehensively override those of the same name in the base profile", and
without a selector profile @0 is used.  ``.ucode`` archives go before the
regular initrds.  Section contents are VirtualSize long.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import FormatError, UsageError
from . import pe
from .layer import Buffer, Format, Layer, ignoring_limits

TEXT_SECTIONS = (".cmdline", ".osrel", ".uname", ".profile")


@dataclass(frozen=True)
class Profile:
    """One profile: its own sections (names) and its metadata."""

    index: int
    sections: tuple[str, ...]
    id: str | None = None
    title: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class Parts:
    """What a loader takes from a UKI once a profile is chosen."""

    linux: Buffer
    ucode: Buffer | None
    initrd: Buffer | None
    cmdline: str | None
    dtb: Buffer | None
    dtbauto: tuple[Buffer, ...] = ()


@dataclass(frozen=True)
class Section:
    """A section's header plus which profile it belongs to (None: base)."""

    header: pe.PeSection
    profile: int | None


@dataclass(frozen=True)
class Uki(Layer):
    FORMAT = "uki"
    machine: int = 0
    subsystem: int = 0
    signature: bool = False
    sections: tuple[str, ...] = ()
    section_table: tuple[Section, ...] = ()
    cmdline: str | None = None
    osrel: str | None = None
    uname: str | None = None
    profiles: tuple[Profile, ...] = ()

    def inner(self) -> Buffer:
        return self.parts(None).linux

    def resolve_profile(self, profile: int | None) -> int | None:
        """The profile the stub would pick: @0 by default when profiles exist."""
        if profile is None:
            return 0 if self.profiles else None
        if not 0 <= profile < len(self.profiles):
            raise UsageError(f"profile @{profile} does not exist; this UKI has "
                             f"{len(self.profiles)} profile(s)")
        return profile

    def chosen(self, name: str, profile: int | None) -> Section | None:
        """The section the stub would use for ``profile``: the profile's own, else the base's."""
        found = None
        for s in self.section_table:
            if s.header.name == name and s.profile in (None, profile):
                if found is None or s.profile is not None:
                    found = s
        return found

    def section(self, name: str, profile: int | None) -> memoryview | None:
        chosen = self.chosen(name, profile)
        return None if chosen is None else pe.section_data(self.data, chosen.header, self.FORMAT)

    def all_chosen(self, name: str, profile: int | None) -> tuple[memoryview, ...]:
        """Every section called ``name`` the stub would consider for ``profile`` (``.dtbauto`` may
        repeat): the profile's own when it has any, else the base's."""
        own = [s for s in self.section_table if s.header.name == name and s.profile == profile]
        picked = own if profile is not None and own else [
            s for s in self.section_table if s.header.name == name and s.profile is None]
        return tuple(pe.section_data(self.data, s.header, self.FORMAT) for s in picked)

    def parts(self, profile: int | None) -> Parts:
        """The kernel, ``.ucode``, ``.initrd``, cmdline and DTB for ``profile``."""
        profile = self.resolve_profile(profile)
        get = lambda name: self.section(name, profile)  # noqa: E731
        cmdline = get(".cmdline")
        return Parts(linux=pe.trim_padding(get(".linux")), ucode=get(".ucode"),
                     initrd=get(".initrd"), cmdline=None if cmdline is None else text(cmdline),
                     dtb=get(".dtb"), dtbauto=self.all_chosen(".dtbauto", profile))


def text(data: Buffer) -> str:
    """A text section: UTF-8, trailing NULs and whitespace dropped as the stub does."""
    return bytes(data).split(b"\0", 1)[0].decode("utf-8", "replace").rstrip()


def key_values(data: Buffer) -> dict[str, str]:
    """os-release style KEY=value lines (.osrel, .profile)."""
    out = {}
    for line in text(data).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip("\"'")
    return out


def read_sections(data: Buffer, layer: str) -> tuple[pe.PeHeader, tuple[Section, ...]]:
    """The PE header and its sections, each tagged with its profile."""
    hdr = pe.read_header(data, layer)
    tagged, profile = [], None
    for s in hdr.sections:
        if s.name == ".profile":
            profile = 0 if profile is None else profile + 1
        tagged.append(Section(s, profile))
    return hdr, tuple(tagged)


def probe(data: Buffer) -> bool:
    return pe.has_pe_header(data) and _has_section(data, ".linux")


def _has_section(data: Buffer, name: str) -> bool:
    try:
        return any(s.name == name for s in pe.read_header(data).sections)
    except FormatError:
        return False


def parse(data: Buffer) -> Uki:
    hdr, table = read_sections(data, "uki")
    base = [s for s in table if s.profile is None]
    if not any(s.header.name == ".linux" for s in base):
        raise FormatError("uki", "the .linux section must be in the base profile",
                          field="section table")
    uki = Uki(arch=hdr.arch, data=data, machine=hdr.machine, subsystem=hdr.subsystem,
              signature=hdr.signed, sections=tuple(s.header.name for s in table),
              section_table=table)
    base_text = {name: _text_of(uki, name, None) for name in TEXT_SECTIONS}
    return replace(uki, cmdline=base_text[".cmdline"], osrel=base_text[".osrel"],
                   uname=base_text[".uname"], profiles=_profiles(uki, table))


def _text_of(uki: Uki, name: str, profile: int | None) -> str | None:
    data = uki.section(name, profile)
    return None if data is None else text(data)


def _profiles(uki: Uki, table: tuple[Section, ...]) -> tuple[Profile, ...]:
    count = 1 + max((s.profile for s in table if s.profile is not None), default=-1)
    out = []
    for n in range(count):
        own = [s for s in table if s.profile == n]
        meta = key_values(pe.section_data(uki.data, own[0].header, "uki"))
        out.append(Profile(index=n, sections=tuple(s.header.name for s in own),
                           id=meta.get("ID"), title=meta.get("TITLE"),
                           cmdline=_text_of(uki, ".cmdline", n)))
    return tuple(out)


FORMAT = Format("uki", probe, ignoring_limits(parse), "a PE image with a .linux section")
