"""The documented Python API: the same operations as the CLI, returning data.

    >>> import pykexec
    >>> report = pykexec.inspect("/boot/vmlinuz")          # dict, as `inspect --json`
    >>> written = pykexec.extract("/boot/vmlinuz", "out")  # {"kernel": Path, ...}
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import formats
from .limits import Limits
from .prepare import Prepared, prepare


def read_image(path: str | Path) -> bytes:
    """Read an image once; everything after works on these bytes."""
    return Path(path).read_bytes()


def inspect(path: str | Path, *, limits: Limits | None = None) -> dict:
    """Describe an image and every layer inside it, from the file inward."""
    data = read_image(path)
    layers = formats.unwrap(data, limits or Limits.from_env())
    return {"path": str(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "layers": [layer.to_json() for layer in layers]}


def prepare_file(path: str | Path, *, profile: int | None = None,
                 addons: tuple[str | Path, ...] = (), limits: Limits | None = None) -> Prepared:
    """Unwrap an image file to what a loader hands the kernel."""
    return prepare(read_image(path), profile=profile,
                   addons=tuple(read_image(a) for a in addons), limits=limits or Limits.from_env())


def extract(path: str | Path, outdir: str | Path, *, profile: int | None = None,
            limits: Limits | None = None) -> dict[str, Path]:
    """Write kernel, initrd, cmdline, dtb and vmlinux (where present) into ``outdir``."""
    prepared = prepare_file(path, profile=profile, limits=limits)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    pieces = {"kernel": prepared.kernel, "initrd": prepared.initrd,
              "cmdline": None if prepared.cmdline is None else prepared.cmdline.encode(),
              "dtb": prepared.dtb, "vmlinux": prepared.vmlinux}
    written = {}
    for name, content in pieces.items():
        if content is not None:
            (out / name).write_bytes(content)
            written[name] = out / name
    return written
