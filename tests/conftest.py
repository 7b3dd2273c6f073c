"""Fixtures shared by the test tree: the synthetic image builders and what they make.

The builders themselves are plain functions in :mod:`tests.builders`; the
fixtures here only expose them (and a few costly products, built once per
session) to the tests.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import builders

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def build():
    """The builders module: ``build.bzimage(...)``, ``build.uki(...)``, ..."""
    return builders


@pytest.fixture(scope="session")
def samples() -> dict[str, bytes]:
    """One small valid image per registry format, keyed by the format name."""
    return builders.samples()


@pytest.fixture(scope="session")
def bombs() -> dict[str, bytes]:
    """Decompression bombs of about 1 GiB of zeros for each codec (legacy .lzma: 128 MiB,
    it cannot be spliced and compressing more would cost seconds)."""
    gib = 1 << 30
    return {
        "gzip": builders.gzip_bomb(gib),
        "zstd": builders.zstd_bomb(gib),
        "xz": builders.xz_bomb(gib),
        "lzma": builders.lzma_bomb(128 << 20),
        "lz4": builders.lz4_bomb(gib),
        "lzo": builders.lzo_bomb(gib),
        "bzip2": builders.bzip2_bomb(26),
    }


@pytest.fixture
def image_file(tmp_path):
    """Write bytes to a file under tmp_path and return its path."""
    def write(data: bytes, name: str = "image") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return write


def run_pykexec(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m pykexec ARGS`` in a child process, as a user would run it."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYKEXEC_MAX_OUTPUT"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pykexec", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT)


@pytest.fixture
def pykexec_cli():
    """Run the CLI as a subprocess: ``pykexec_cli("inspect", path)``."""
    return run_pykexec


@pytest.fixture
def frozen_gc():
    """Freeze what the session has allocated so far out of the collector's sight.

    pefile calls gc.collect() every time it rejects an image; in a long test session
    with a large heap that costs tens of milliseconds per call, and the truncation tests
    make hundreds of such calls.  Objects created during the test are collected normally.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
