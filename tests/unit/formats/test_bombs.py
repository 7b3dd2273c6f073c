"""A standalone compressed file (no container declares its size) decompresses under a
default cap of 512 MiB, and a bomb is refused before it costs more than that in memory.

The bomb is 600 MiB of zeros, made by the builders (one full-flushed deflate run repeated:
gzip -9 of /dev/zero takes seconds; gzip -l would decompress it all); peak resident
memory is the child's VmHWM (not ru_maxrss, which Linux carries over from the forking
parent).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from pykexec.errors import LimitExceeded
from pykexec.formats import compression
from pykexec.limits import DEFAULT_MAX_OUTPUT, Limits
from tests import builders as b

MiB = 1 << 20
CAP = 512 * MiB
PEAK = ("import sys; from pykexec.cli import main; rc = main(sys.argv[1:]); "
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')));"
        " sys.exit(rc)")


def test_the_default_cap_is_512_mib():
    assert DEFAULT_MAX_OUTPUT == CAP and Limits().max_output == CAP


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory):
    """600 MiB of zeros in about 600 KiB of gzip."""
    path = tmp_path_factory.mktemp("bomb") / "zeros.gz"
    path.write_bytes(b.gzip_bomb(600 * MiB))
    data = path.read_bytes()
    assert len(data) < MiB and int.from_bytes(data[-4:], "little") == 600 * MiB  # RFC 1952 ISIZE
    return path


def _run(path, *args, env=None):
    full = {k: v for k, v in os.environ.items() if k != "PYKEXEC_MAX_OUTPUT"}
    full.update(env or {})
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", PEAK, "inspect", *args, str(path)], capture_output=True,
                         text=True, env=full, timeout=120)
    return out, time.monotonic() - start


def test_a_600_mib_gzip_bomb_is_refused_within_the_cap_plus_64_mib(gzip_bomb):
    out, elapsed = _run(gzip_bomb)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pykexec: error: gzip") and str(CAP) in lines[0]
    peak_kib = int(out.stdout.split()[-1])
    assert peak_kib < (CAP + 64 * MiB) >> 10, f"peak RSS {peak_kib >> 10} MiB"
    assert elapsed < 30


def test_max_output_still_raises_and_lowers_the_cap(gzip_bomb):
    lowered, _ = _run(gzip_bomb, "--max-output", str(8 * MiB))
    assert lowered.returncode == 2 and str(8 * MiB) in lowered.stderr
    assert int(lowered.stdout.split()[-1]) < 200 * 1024
    from_env, _ = _run(gzip_bomb, env={"PYKEXEC_MAX_OUTPUT": str(16 * MiB)})
    assert from_env.returncode == 2 and str(16 * MiB) in from_env.stderr


def test_raising_the_cap_lets_a_larger_standalone_file_through():
    """--max-output above the default lets more than 512 MiB decode (checked in-process
    on a smaller scale: the cap is what Limits says, not a fixed constant)."""
    if shutil.which("gzip") is None:
        pytest.skip("gzip not installed")
    data = subprocess.run(["gzip", "-1", "-c"], input=bytes(3 * MiB), capture_output=True,
                          check=True).stdout
    with pytest.raises(LimitExceeded):
        compression.decompress("gzip", data, Limits(max_output=2 * MiB))
    assert compression.decompress("gzip", data, Limits(max_output=4 * MiB)).decompressed_size == 3 * MiB
