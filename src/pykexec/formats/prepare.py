"""What a loader hands to the kernel, worked out from a parsed image.

``kexec_file_load`` takes a kernel it can probe itself (a bzImage, an arm64,
riscv or LoongArch Image, or an ELF where the architecture allows), an initrd
and a command line.  Wrappers the kernel cannot probe are opened here: a UKI
gives its ``.linux`` and the sections of the chosen profile, a zboot or a
compressed Image gives the decompressed Image.  A bzImage stays a bzImage;
its decompressed vmlinux is kept alongside for tools that want it.

Initrd order follows UAPI.5 "PE Addons": add-on ``.ucode`` archives are
prefixed in reverse add-on order, then the UKI's ``.ucode`` and ``.initrd``,
then the add-ons' ``.initrd`` archives in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from .. import formats
from ..errors import NotLoadable, PykexecError, UsageError
from .bzimage import BzImage
from .kernel_image import KernelImage
from .layer import Buffer, Layer
from .uki import Uki
from ..limits import Limits

if TYPE_CHECKING:
    from .uki_addon import UkiAddon

# Compressed streams and add-ons are imported where they are met (a plain bzImage's
# load parses neither), and the kernel layers a loader takes say so themselves
# (Layer.KERNEL), so that preparing a bzImage imports no ELF or Multiboot parser.
INITRD_ALIGN = 4


@dataclass(frozen=True)
class Prepared:
    """The pieces of a load: kernel, initrds in order, command line, DTB.

    ``dtb`` is a UKI's ``.dtb``; ``dtbauto`` its ``.dtbauto`` candidates, of
    which a loader takes the first whose compatible matches the machine's.
    """

    layers: tuple[Layer, ...]
    kernel_layer: Layer
    kernel: Buffer
    initrds: tuple[Buffer, ...] = ()
    cmdline: str | None = None
    dtb: Buffer | None = None
    vmlinux: Buffer | None = None
    dtbauto: tuple[Buffer, ...] = ()
    kernel_is_input: bool = False

    @property
    def initrd(self) -> bytes | None:
        return join_initrds(self.initrds)


def join_initrds(parts) -> bytes | None:
    """Initrds joined as systemd-stub joins them: each padded to a 4-byte boundary."""
    if not parts:
        return None
    out = bytearray()
    for part in parts:
        out += part
        out += bytes(-len(out) % INITRD_ALIGN)
    return bytes(out)


def prepare(data: Buffer, *, profile: int | None = None, addons: tuple[Buffer, ...] = (),
            limits: Limits = Limits(), vmlinux: bool | BinaryIO = False) -> Prepared:
    """Unwrap ``data`` down to the kernel and collect what comes with it.

    A loader stops at the kernel; ``vmlinux`` also decompresses a bzImage's
    payload (what ``extract`` writes as DIR/vmlinux), and stops there: the
    vmlinux is handed on as bytes, not parsed.  Given a file rather than True,
    the payload is decoded straight into it (``extract`` never holds the
    vmlinux in memory) and ``Prepared.vmlinux`` is None.
    """
    layers = formats.unwrap(data, limits, _is_kernel)
    top = layers[0]
    if not isinstance(top, Uki):
        layers = _on_to_vmlinux(layers, limits, vmlinux)
        if profile is not None or addons:
            raise UsageError(f"--profile and --addon apply to UKIs; this image is {top.format}")
        return _from_kernel_chain(tuple(layers), data)
    try:
        parts = top.parts(profile)
        own_linux = top.chosen(".linux", top.resolve_profile(profile)) is not top.chosen(
            ".linux", top.resolve_profile(None))
    except PykexecError:
        _on_to_vmlinux(layers, limits, bool(vmlinux))  # the default's vmlinux fails first, as it did
        raise
    # The default profile's vmlinux is decoded even when a profile brings its own
    # .linux (its errors are errors); only the vmlinux written is the chosen one.
    layers = _on_to_vmlinux(layers, limits, bool(vmlinux) if own_linux else vmlinux)
    chain = layers[1:]
    if own_linux:
        chain = _on_to_vmlinux(formats.unwrap(parts.linux, limits, _is_kernel), limits, vmlinux)
    extras = tuple(_addon(a, limits) for a in addons)
    cmdline = " ".join(c for c in (parts.cmdline, *(a.cmdline for a in extras)) if c) or None
    initrds = (*(a.section(".ucode") for a in reversed(extras)), parts.ucode,
               parts.initrd, *(a.section(".initrd") for a in extras))
    base = _from_kernel_chain((top, *chain), parts.linux)
    return Prepared(layers=base.layers, kernel_layer=base.kernel_layer, kernel=base.kernel,
                    initrds=tuple(x for x in initrds if x is not None), cmdline=cmdline,
                    dtb=parts.dtb, vmlinux=base.vmlinux, dtbauto=parts.dtbauto)


def _is_kernel(layer: Layer) -> bool:
    return layer.KERNEL


def _is_compressed(layer: Layer) -> bool:
    from .compression import Compressed
    return isinstance(layer, Compressed)


def _on_to_vmlinux(layers: list[Layer], limits: Limits, vmlinux: bool | BinaryIO) -> list[Layer]:
    """With ``vmlinux``, go on below a bzImage until its payload is decompressed:
    into memory (True), or into the file given."""
    if not vmlinux or not isinstance(layers[-1], BzImage):
        return layers
    return formats.unwrap_from(layers, limits, _is_compressed,
                               out=None if vmlinux is True else vmlinux)


def vmlinux_written(prepared: Prepared) -> bool:
    """Whether ``prepare(vmlinux=file)`` decoded a vmlinux into the file."""
    return any(_is_compressed(x) and x.data is None for x in prepared.layers)


def _addon(data: Buffer, limits: Limits) -> UkiAddon:
    from .uki_addon import UkiAddon
    layer = formats.identify(data, limits, where="add-on")
    if not isinstance(layer, UkiAddon):
        raise UsageError(f"an add-on must be a UKI add-on PE; this one is {layer.format}")
    return layer


def _from_kernel_chain(layers: tuple[Layer, ...], data: Buffer) -> Prepared:
    kernel_layer = next((x for x in layers if x.KERNEL), None)
    if kernel_layer is None:
        chain = " → ".join(x.format for x in layers)
        raise NotLoadable(layers[-1].format, f"holds no kernel a loader can take (layers: {chain})")
    kernel = kernel_layer.kernel_bytes if isinstance(kernel_layer, KernelImage) else kernel_layer.data
    vmlinux = None
    if isinstance(kernel_layer, BzImage) and len(layers) > 1:  # a bzImage alone decoded nothing
        vmlinux = next((x.data for x in reversed(layers) if _is_compressed(x)), None)
    return Prepared(layers=layers, kernel_layer=kernel_layer, kernel=kernel, vmlinux=vmlinux,
                    kernel_is_input=kernel is data)
