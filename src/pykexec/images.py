"""Image files in, files out: ``inspect``, ``prepare_file`` and ``extract``.

These need the format parsers and nothing of the load path; :mod:`pykexec.api`
re-exports them beside ``load``, and the CLI's ``inspect`` and ``extract``
import this module alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from . import formats
from .limits import Limits
from .output import OutputDir
from .formats.prepare import Prepared, prepare, vmlinux_written


def read_image(path: str | Path) -> bytes:
    """Read an image once; everything after works on these bytes."""
    return Path(path).read_bytes()


def inspect(path: str | Path, *, limits: Limits | None = None) -> dict:
    """Describe an image and every layer inside it, from the file inward."""
    import hashlib
    data = read_image(path)
    layers = formats.unwrap(data, limits or Limits.from_env())
    return {"path": str(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "layers": [layer.to_json() for layer in layers]}


def prepare_file(path: str | Path, *, profile: int | None = None,
                 addons: tuple[str | Path, ...] = (), limits: Limits | None = None,
                 vmlinux: bool | BinaryIO = False) -> Prepared:
    """Unwrap an image file to what a loader hands the kernel (and a bzImage's vmlinux)."""
    return prepare(read_image(path), profile=profile, addons=tuple(read_image(a) for a in addons),
                   limits=limits or Limits.from_env(), vmlinux=vmlinux)


def extract(path: str | Path, outdir: str | Path, *, profile: int | None = None,
            limits: Limits | None = None) -> dict[str, Path]:
    """Write kernel, initrd, cmdline, dtb and vmlinux (where present) into ``outdir``.

    A bzImage's vmlinux is decompressed straight into its file.  Nothing is
    written unless everything succeeds.
    """
    with OutputDir(outdir) as out:
        vmlinux = out.stream("vmlinux")
        prepared = prepare_file(path, profile=profile, limits=limits, vmlinux=vmlinux)
        return out.commit({
            "kernel": prepared.kernel, "initrd": prepared.initrd,
            "cmdline": None if prepared.cmdline is None else prepared.cmdline.encode(),
            "dtb": prepared.dtb, "vmlinux": vmlinux if vmlinux_written(prepared) else None})
