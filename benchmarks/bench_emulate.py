#!/usr/bin/env python3
"""Whole-process cost of ``pykexec emulate`` against the static ``pykexec extract``.

Usage: python benchmarks/bench_emulate.py [--json] [--runs N] [--check]

Cases (material from tests/material.py, fetched and cached on first use):

  sid-x86-7.x       sid's 7.x cloud amd64 bzImage (zstd): its EFI stub
                    decompresses the kernel under emulation (``nokaslr``).
  arm64-zboot-6.1   the gzip arm64 zboot built from linux-source-6.1: the zboot
                    stub decompresses the Image through LoadFile2, LoadImage and
                    StartImage run it, its stub hands over.

Both commands run in the same run, interleaved, N times (default 3, after a
warm-up); the median wall time (and CPU time, user+sys of the child) is
reported with the ratio emulate/extract and the emulated instructions per
second (instructions from the emulator's report, over its own emulation time).
``pykexec emulate`` is run as ``python -m pykexec emulate`` when the CLI has the
verb, else through ``pykexec.cli.emulate`` in a fresh interpreter (the same work).

Targets: < 5 s for the 7.x kernel and ratio <= 10.  --json prints a JSON
document on stdout (the table goes to stderr); --check exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import material  # noqa: E402

SECONDS_TARGET = 5.0
RATIO_TARGET = 10.0
RUNNER = ("import sys, argparse; from pykexec.cli import emulate as cli; p = argparse.ArgumentParser(); "
          "[p.add_argument(*f, **k) for f, k in cli.COMMANDS['emulate'][1]]; "
          "sys.exit(cli.HANDLERS['emulate'](p.parse_args(sys.argv[1:])))")


def _env() -> dict:
    env = dict(os.environ)
    if importlib.util.find_spec("pykexec") is None:
        env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"]
                                                 if env.get("PYTHONPATH") else "")
    return env


def _cli_has_emulate() -> bool:
    proc = subprocess.run([sys.executable, "-m", "pykexec", "emulate", "--help"],
                          capture_output=True, env=_env())
    return proc.returncode == 0


def _timed(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, env=_env())
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                         f"{proc.stderr.decode(errors='replace')[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def cases() -> dict[str, tuple[Path, str]]:
    efi, _ = material.arm64_zboot("gzip")
    return {"sid-x86-7.x": (material.sid_cloud_bzimage(), "console=ttyS0 nokaslr"),
            "arm64-zboot-6.1": (efi, "console=ttyAMA0")}


def bench(name: str, image: Path, cmdline: str, runs: int, via_cli: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-emulate.") as td:
        td = Path(td)
        emulate = ([sys.executable, "-m", "pykexec", "emulate"] if via_cli
                   else [sys.executable, "-c", RUNNER])
        emulate += [str(image), "--cmdline", cmdline, "-o", str(td / "emu")]
        extract = [sys.executable, "-m", "pykexec", "extract", str(image), "-o", str(td / "ext")]
        _timed(emulate)
        _timed(extract)
        times = {"emulate": [], "extract": []}
        for _ in range(runs):
            times["emulate"].append(_timed(emulate))
            times["extract"].append(_timed(extract))
        report = json.loads((td / "emu" / "report.json").read_text())
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in times.items()}
    ins = report.get("instructions")
    return {"case": name, "image": str(image),
            "emulate_s": round(med["emulate"][0], 3), "emulate_cpu_s": round(med["emulate"][1], 3),
            "extract_s": round(med["extract"][0], 3), "extract_cpu_s": round(med["extract"][1], 3),
            "ratio": round(med["emulate"][0] / med["extract"][0], 2),
            "cpu_ratio": round(med["emulate"][1] / med["extract"][1], 2),
            "instructions": ins, "emulation_s": report.get("seconds"),
            "insn_per_s": round(ins / report["seconds"]) if ins and report.get("seconds") else None,
            "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    via_cli = _cli_has_emulate()
    rows = [bench(name, image, cmdline, args.runs, via_cli)
            for name, (image, cmdline) in cases().items()]
    out = sys.stderr if args.json else sys.stdout
    print(f"{'case':18} {'emulate':>9} {'(cpu)':>7} {'extract':>9} {'(cpu)':>7} {'ratio':>6} "
          f"{'insns':>13} {'M insn/s':>9}", file=out)
    for r in rows:
        rate = f"{r['insn_per_s'] / 1e6:9.0f}" if r["insn_per_s"] else f"{'?':>9}"
        print(f"{r['case']:18} {r['emulate_s']:8.2f}s {r['emulate_cpu_s']:6.2f}s "
              f"{r['extract_s']:8.2f}s {r['extract_cpu_s']:6.2f}s {r['ratio']:6.1f} "
              f"{r['instructions'] or 0:13d} {rate}", file=out)
    misses = [f"{r['case']}: ratio {r['ratio']} > {RATIO_TARGET}" for r in rows
              if r["ratio"] > RATIO_TARGET]
    misses += [f"{r['case']}: {r['emulate_s']} s >= {SECONDS_TARGET} s" for r in rows
               if r["case"].startswith("sid-x86") and r["emulate_s"] >= SECONDS_TARGET]
    for m in misses:
        print(f"target missed: {m}", file=out)
    if args.json:
        print(json.dumps({"cases": rows, "targets": {"seconds": SECONDS_TARGET,
                                                      "ratio": RATIO_TARGET},
                          "missed": misses, "via": "cli" if via_cli else "pykexec.cli.emulate"}))
    return 1 if args.check and misses else 0


if __name__ == "__main__":
    sys.exit(main())
