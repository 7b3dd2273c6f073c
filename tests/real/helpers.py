"""Helpers for the real-image tests: running the CLI, and small oracles."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

try:
    from tests import material
except ImportError:  # tests/ itself on sys.path
    sys.path.insert(0, str(ROOT / "tests"))
    import material  # type: ignore[no-redef]

__all__ = ["material", "run_cli", "describe", "assert_no_traceback", "assert_clean_error",
           "inspect_json", "extract", "formats", "num", "newc_cpio"]


def _cli_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # the tests may run before pykexec is installed into the interpreter
    if importlib.util.find_spec("pykexec") is None:
        src = str(ROOT / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cli(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m pykexec ARGS`` with stdout/stderr captured as bytes."""
    cmd = [sys.executable, "-m", "pykexec", *[os.fspath(a) for a in args]]
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, env=_cli_env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`{' '.join(cmd)}` did not finish in {timeout}s "
                    f"(stderr so far: {(e.stderr or b'')[-500:]!r})")


def describe(proc: subprocess.CompletedProcess) -> str:
    return (f"`{' '.join(map(str, proc.args))}` exited {proc.returncode}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}\n"
            f"stdout: {proc.stdout.decode(errors='replace')[:1500]}")


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert b"Traceback" not in proc.stderr, describe(proc)


def assert_clean_error(proc: subprocess.CompletedProcess) -> None:
    """Exit 2, exactly one stderr line, starting ``pykexec: error: ``."""
    assert proc.returncode == 2, describe(proc)
    assert_no_traceback(proc)
    lines = proc.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith("pykexec: error: "), describe(proc)


def inspect_json(path, *extra, timeout: float = 180) -> dict:
    proc = run_cli("inspect", path, "--json", *extra, timeout=timeout)
    assert proc.returncode == 0, describe(proc)
    assert_no_traceback(proc)
    try:
        doc = json.loads(proc.stdout)
    except ValueError as e:
        pytest.fail(f"inspect --json printed no single JSON object ({e}): {describe(proc)}")
    assert isinstance(doc, dict), doc
    return doc


def extract(path, outdir: Path, *extra, timeout: float = 180) -> Path:
    proc = run_cli("extract", path, "-o", outdir, *extra, timeout=timeout)
    assert proc.returncode == 0, describe(proc)
    assert_no_traceback(proc)
    return Path(outdir)


def formats(doc: dict) -> list:
    return [layer.get("format") for layer in doc["layers"]]


def num(value):
    """A JSON number, or a "0x..." string, as int (bools as 0/1)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return int(value, 0)
    return value



def newc_cpio(files: dict) -> bytes:
    """A "newc" cpio archive of regular files, with the TRAILER!!!, padded to 512."""
    out = bytearray()

    def pad4():
        out.extend(b"\0" * (-len(out) % 4))

    ino = 1
    for name, data in list(files.items()) + [("TRAILER!!!", None)]:
        nb = name.encode() + b"\0"
        mode = 0o100644 if data is not None else 0
        body = data or b""
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino if data is not None else 0, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(nb), 0))
        out += hdr.encode() + nb
        pad4()
        out += body
        pad4()
        ino += 1
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)
