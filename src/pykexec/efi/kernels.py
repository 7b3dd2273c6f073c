"""Which nested images are kernels ``kexec_file_load`` takes: the early capture's targets.

A loader needs what a UKI's stub hands the kernel's own EFI stub: the kernel
image, the command line and the initrd.  Emulating further (the kernel's stub
decompressing the kernel) adds nothing a loader needs, so ``--stop-at
kernel-stub`` stops when execution reaches the entry point of a nested PE
image that pykexec's static parsers recognise as such a kernel:

* x86_64: a ``bzimage`` (kexec_file_load's x86 ``kexec_bzImage64_ops``);
* arm64: an ``arm64-image``, or a ``zboot`` unwrapped statically to its Image
  (``kexec_image_ops`` takes the Image).

The registry (:mod:`pykexec.formats`) decides; nothing here checks magic
numbers itself.  Two ways to reach such an entry are watched
(:mod:`.services`):

* LoadImage of the kernel, then StartImage (systemd-stub up to 255, the 6.1
  zboot wrapper): the bytes LoadImage was given are the kernel;
* a stub that lays the kernel out itself and calls its entry point
  (systemd-stub 256+ with Secure Boot off, ``linux.c``: AllocatePages of
  SizeOfImage, each section's raw data copied to its VirtualAddress, no PE
  headers, no relocations, ``entry(parent_image, ST)``).  The candidates are
  the sections of the top image that hold such a kernel (a UKI's ``.linux``);
  an allocation large enough for one gets a watch at its entry point, and
  when execution gets there the allocation must hold that kernel's sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PykexecError
from ..formats.pe import DOS_HEADER, DOS_MAGIC
from .memory import EfiStatusError
from .peload import PeInfo, read_pe

#: PE images the registry must unwrap to this layer, per emulated architecture
KERNEL_FORMATS = {"x86_64": "bzimage", "arm64": "arm64-image"}


@dataclass(frozen=True)
class Kernel:
    """A PE image the registry recognises as a kernel kexec_file_load takes."""

    data: bytes = field(repr=False)         # the PE image, as given (LoadImage buffer, section)
    loadable: bytes = field(repr=False)     # for kexec_file_load: bzImage, (unwrapped) Image
    layers: tuple[str, ...]
    entry: int                              # AddressOfEntryPoint (RVA)
    size_of_image: int
    info: PeInfo = field(repr=False)
    origin: str = ""                        # where it came from, for reports

    def laid_out_at(self, read, base: int) -> bool:
        """Whether memory at ``base`` holds this image's sections as a PE loader places them.

        ``read(addr, size)`` reads guest memory.  Only the sections' raw data is
        compared (systemd-stub copies no headers); the entry's first bytes first,
        so that a watch on reused memory costs little.
        """
        spans = []
        for s in self.info.sections:
            size = min(s.raw_size, len(self.data) - s.raw_offset)
            if s.virtual_size:
                size = min(size, s.virtual_size)
            if size > 0:
                spans.append((s.virtual_address, s.raw_offset, size))
        for va, raw, size in spans:
            if va <= self.entry < va + size:
                n, off = min(64, va + size - self.entry), raw + self.entry - va
                if read(base + self.entry, n) != self.data[off:off + n]:
                    return False
        return all(read(base + va, size) == self.data[raw:raw + size] for va, raw, size in spans)


def recognise(data: bytes, arch: str, *, origin: str = "") -> Kernel | None:
    """``data`` as a :class:`Kernel` for ``arch``, or None if the registry says it is none."""
    from .. import formats
    from ..formats.arm64_image import Arm64Image
    from ..formats.bzimage import BzImage
    from ..limits import Limits
    want = KERNEL_FORMATS.get(arch)
    if want is None or len(data) < DOS_HEADER.size or data[:2] != DOS_MAGIC:
        return None
    try:
        info = read_pe(data)
        layers = formats.unwrap(data, Limits(),
                                until=lambda layer: isinstance(layer, (BzImage, Arm64Image)))
    except (EfiStatusError, PykexecError):
        return None
    kernel = layers[-1]
    if kernel.format != want or kernel.arch != arch:
        return None
    loadable = bytes(kernel.kernel_bytes) if isinstance(kernel, Arm64Image) else bytes(data)
    return Kernel(data=bytes(data), loadable=loadable, layers=tuple(x.format for x in layers),
                  entry=info.entry, size_of_image=info.size_of_image, info=info, origin=origin)


def in_sections(data: bytes, info: PeInfo, arch: str) -> list[Kernel]:
    """The kernels among the sections of a PE image (a UKI's ``.linux``, in every profile).

    A section's contents are VirtualSize long (the UKI specification), never
    more than its raw data.
    """
    found = []
    for s in info.sections:
        size = min(s.raw_size, s.virtual_size) if s.virtual_size else s.raw_size
        body = data[s.raw_offset:s.raw_offset + size]
        if body[:2] == DOS_MAGIC:
            kernel = recognise(body, arch, origin=f"section {s.name}")
            if kernel is not None:
                found.append(kernel)
    return found
