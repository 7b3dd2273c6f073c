"""Long steps show progress on a terminal and stay quiet elsewhere."""

from __future__ import annotations

import gzip
import io

from pykexec import formats
from pykexec.limits import Limits, TerminalProgress, terminal_progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_when_not_a_terminal():
    assert terminal_progress(io.StringIO()) is None


def test_reports_decompression_on_a_terminal():
    out = Tty()
    payload = gzip.compress(bytes(5 << 20))
    formats.identify(payload, Limits(progress=terminal_progress(out)))
    text = out.getvalue()
    assert "decompressing gzip" in text and "5 MiB" in text


def test_declared_size_gives_a_percentage():
    out = io.StringIO()
    progress = TerminalProgress(out, interval=0)
    progress("decompressing zstd", 4 << 20, 8 << 20)
    progress("decompressing zstd", 8 << 20, 8 << 20)
    assert "(50%)" in out.getvalue() and out.getvalue().endswith("(100%)\x1b[K\n")
