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
    assert "4 MiB of 8 MiB (50%)" in out.getvalue()
    assert out.getvalue().endswith("\rdecompressing zstd: 8 MiB\x1b[K\n")     # done: one line


def test_other_units():
    out = io.StringIO()
    progress = TerminalProgress(out, interval=0, unit=("M instructions", 10**6))
    progress("emulating", 250_000_000, None)
    progress("emulating", 839_385_157, 839_385_157)
    assert out.getvalue() == ("\remulating: 250 M instructions\x1b[K"
                              "\remulating: 839 M instructions\x1b[K\n")
