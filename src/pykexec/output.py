"""Writing what a command produced into an output directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


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


class Stream:
    """A file of an :class:`OutputDir` written while it is produced (e.g. decompressed).

    Nothing is created before the first write; the bytes go to a hidden
    temporary file that :meth:`OutputDir.commit` renames into place.  A file
    system error is held until :meth:`finish`: the producer runs to its end
    first, so a bad image is still reported before a bad output directory.
    """

    def __init__(self, outdir: OutputDir, name: str) -> None:
        self.outdir, self.name = outdir, name
        self.temp = outdir.path / f".{name}.{os.getpid()}.tmp"
        self.file: BinaryIO | None = None
        self.error: OSError | None = None

    def write(self, data) -> int:
        if self.error is None:
            try:
                if self.file is None:
                    self.outdir.create()
                    self.file = open(self.temp, "wb")  # noqa: SIM115  (closed by finish or discard)
                self.file.write(data)
            except OSError as e:
                self.error = e
        return len(data)

    def finish(self) -> Path:
        """Close the file (creating it empty if nothing was written) and move it into place."""
        if self.file is None:
            self.write(b"")
        if self.error is not None:
            raise self.error
        self.file.close()
        final = self.outdir.path / self.name
        os.replace(self.temp, final)
        return final

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.temp.unlink(missing_ok=True)
            self.file = None


class OutputDir:
    """An output directory filled all or nothing, as a context manager.

    Nothing touches the file system before the first byte is written.  If the
    block fails, streams are discarded and the directories this created are
    removed, so a bad image leaves nothing behind.
    """

    def __init__(self, outdir: str | Path) -> None:
        self.path = Path(outdir)
        self.created: list[Path] = []
        self.streams: list[Stream] = []

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            return
        for stream in self.streams:
            stream.discard()
        for directory in reversed(self.created):
            try:
                directory.rmdir()
            except OSError:
                break

    def create(self) -> None:
        """Create the directory (and its missing parents) once."""
        if self.created or self.path.is_dir():
            return
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        self.created = missing[::-1]

    def stream(self, name: str) -> Stream:
        stream = Stream(self, name)
        self.streams.append(stream)
        return stream

    def commit(self, pieces: dict[str, bytes | memoryview | Stream | None]) -> dict[str, Path]:
        """Write each present piece as ``<dir>/<name>`` (a stream is moved into place);
        return what was written, in the order given.  Unused streams are discarded."""
        self.create()
        written = {}
        for name, content in pieces.items():
            if isinstance(content, Stream):
                continue
            if content is not None:
                (self.path / name).write_bytes(content)
                written[name] = self.path / name
        finals = {content.name: content.finish() for content in pieces.values()
                  if isinstance(content, Stream)}
        for stream in self.streams:
            if stream.name not in finals:
                stream.discard()
        return {name: written.get(name) or finals[name] for name in pieces
                if name in written or name in finals}
