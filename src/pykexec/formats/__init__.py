"""Boot-image formats and the registry that recognises them.

Formats are tried in a fixed order, as the kernel's ``kexec_file_ops`` and
kexec-tools' ``file_type[]`` are: the first whose probe accepts the bytes
parses them.  Specific formats come before general ones (a zboot, a bzImage
or an arm64 Image is also a PE image; a UKI is a PE image with ``.linux``;
a LoongArch Image is recognised only by its PE Machine, so UKIs and add-ons
for LoongArch must be claimed first).  What pykexec names but does not load (a
32-bit ARM zImage, which may also be a PE image; a UEFI firmware volume; a
cpio archive) comes before the general PE, ELF and Multiboot formats, whose
probes would claim a PE zImage or find a Multiboot header in an archived file.
Wrappers hand their inner bytes back to the registry, so nesting such as
UKI → zboot → gzip → arm64 Image is followed to the end.
"""

from __future__ import annotations

import importlib
from typing import BinaryIO, Callable, Iterator

from ..errors import FormatError, LimitExceeded, UnknownFormat
from ..limits import Limits
from .layer import Buffer, Format, Layer

# The registry: the modules that declare the formats, in the order their formats are
# tried.  Each module declares ``FORMAT`` (compression declares ``FORMATS``, one per
# codec, in its ``CODECS`` order).  A module is imported when the registry first reaches
# it, so that identifying a bzImage imports the zboot and bzimage modules and no other
# parser; ``FORMATS`` and ``NAMES`` import them all.
REGISTRY: tuple[str, ...] = (
    "zboot",
    "bzimage",
    "arm64_image",
    "riscv_image",
    "uki",
    "uki_addon",
    "loongarch_image",
    "arm_zimage",
    "uefi_fv",
    "cpio",
    "pe",
    "elf",
    "multiboot2",
    "multiboot",
    "compression",
)


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def registered() -> Iterator[Format]:
    """The formats in registry order, each module imported only when reached."""
    for name in REGISTRY:
        module = _module(name)
        yield from getattr(module, "FORMATS", None) or (module.FORMAT,)


def __getattr__(name: str):
    """``FORMATS`` and ``NAMES`` (every format, in order), and the format modules by name."""
    if name == "FORMATS":
        return tuple(registered())
    if name == "NAMES":
        return tuple(f.name for f in registered())
    if name in REGISTRY:
        return _module(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _accepts(fmt: Format, data: Buffer) -> bool:
    try:
        return fmt.probe(data)
    except FormatError:
        return False


def identify(data: Buffer, limits: Limits = Limits(), *, where: str = "image",
             out: BinaryIO | None = None) -> Layer:
    """Parse ``data`` with the first format that accepts it.

    ``out``: when that format is a compressed stream, decode it into this file
    instead of into memory (the layer then holds no bytes).
    """
    for fmt in registered():
        if _accepts(fmt, data):
            if out is not None:
                from . import compression
                if fmt.name in compression.CODECS:
                    return compression.decompress(fmt.name, data, limits, out)
            return fmt.parse(data, limits)
    raise UnknownFormat({f.name: f"needs {f.needs}" for f in registered()}, bytes(data[:8]),
                        layer=where)


def unwrap(data: Buffer, limits: Limits = Limits(),
           until: Callable[[Layer], bool] | None = None) -> list[Layer]:
    """Every layer from the file inward, each wrapper's inner bytes parsed in turn.

    ``until`` stops at the first layer it accepts (a loader needs no deeper);
    given one, a chain that ends at a layer that says why no loader can take it
    (:meth:`Layer.refusal`: an object file, firmware, an initramfs, a Multiboot
    header that requires what pykexec does not implement) raises that.
    """
    return unwrap_from([identify(data, limits)], limits, until)


def unwrap_from(layers: list[Layer], limits: Limits = Limits(),
                until: Callable[[Layer], bool] | None = None, *,
                out: BinaryIO | None = None) -> list[Layer]:
    """``layers`` (from the file inward) continued as :func:`unwrap` continues them.

    ``out``: a compressed stream met on the way is decoded into this file, not
    into memory; its layer holds no bytes, so unwrapping ends there.
    """
    layers = list(layers)
    while not (until and until(layers[-1])) and (inner := layers[-1].inner()) is not None:
        outer = layers[-1]
        if len(layers) >= limits.max_depth:
            raise LimitExceeded(outer.format, f"images nest deeper than {limits.max_depth} layers",
                                field="payload")
        inner_limits = limits.capped(outer.inner_size(), f"the {outer.format} header")
        layer = identify(inner, inner_limits, where=f"{outer.format} payload", out=out)
        _check_declared_size(outer, layer)
        layers.append(layer)
    if until is not None and (refused := layers[-1].refusal()) is not None:
        raise refused
    return layers


def _check_declared_size(outer: Layer, layer: Layer) -> None:
    """A decompressed payload must have the size its container declares."""
    declared = outer.inner_size()
    if declared is None:
        return
    from .compression import Compressed
    if not isinstance(layer, Compressed):
        return
    if layer.decompressed_size % (1 << 32) != declared:
        raise FormatError(outer.format, f"payload decompresses to {layer.decompressed_size} bytes "
                          f"but the header declares {declared}", field="decompressed size")


__all__ = ["FORMATS", "NAMES", "REGISTRY", "Layer", "identify", "registered", "unwrap", "unwrap_from"]
