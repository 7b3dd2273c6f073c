"""Writing what a command produced into an output directory."""

from __future__ import annotations

from pathlib import Path


def write_files(outdir: str | Path, pieces: dict[str, bytes | memoryview | None]) -> dict[str, Path]:
    """Write each present piece as ``outdir/<name>``; return what was written."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, content in pieces.items():
        if content is not None:
            (out / name).write_bytes(content)
            written[name] = out / name
    return written
