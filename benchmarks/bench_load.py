#!/usr/bin/env python3
"""A file-mode load costs the same with any initrd: ``load --dry-run`` with 1 MB and with 200 MB.

``kexec_file_load`` reads the kernel and the initrd itself, so pykexec needs
their headers and sizes and nothing more.  This runs, natively,

    python -m pykexec load --dry-run --mode file BZIMAGE --initrd INITRD
        --machine tests/data/machines/qemu-pc-1g-debian6.1.iomem
        --no-require-signature --command-line console=ttyS0

with a 1 MB and a 200 MB initrd of random bytes (written to a temporary
directory, so both are in the page cache), alternately, N times each after a
warm-up, and compares the medians.  The machine description and
``--no-require-signature`` make the run the same on any host.  BZIMAGE is
bookworm's cloud kernel (tests/material.py, fetched and cached on first use)
unless ``--image`` names another.

Per run: wall time (``time.perf_counter`` around spawn..reap), CPU time and
peak RSS (``ru_utime + ru_stime`` and ``ru_maxrss`` of that child, from
``os.wait4``).  Linux counts in a child's ``ru_maxrss`` the peak of the
memory it ran in before its exec, which for a child spawned with vfork is
this process's, so this process stays small: the initrds, the image and the
compiled modules are made by child processes, and ``python -c pass``,
measured alongside, shows the floor that leaves.  pykexec's modules are
compiled first, as an installed package has them.

Targets: the 200 MB load's median wall time within 10% of the 1 MB load's
(and so the median of their ratios run by run, which a busy machine's load
disturbs less), and its peak RSS less than 5 MiB higher.

Run:  .venv/bin/python benchmarks/bench_load.py [--runs 15] [--image FILE] [--json] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE = ROOT / "tests" / "data" / "machines" / "qemu-pc-1g-debian6.1.iomem"
MB = 1000 * 1000
MiB = 1 << 20
INITRDS = {"1 MB initrd": 1 * MB, "200 MB initrd": 200 * MB}
WALL_TARGET = 0.10
RSS_TARGET = 5 * MiB


def measure(argv: list[str]) -> dict:
    """One child: wall seconds, CPU seconds and peak RSS bytes; raises if it fails."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"`{' '.join(argv)}` failed: {err.read().decode(errors='replace')[-800:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss * 1024}


def random_file(path: Path, size: int) -> Path:
    """``size`` random bytes, written by ``head`` so that this process stays small."""
    with open(path, "wb") as f:
        subprocess.run(["head", "-c", str(size), "/dev/urandom"], stdout=f, check=True)
    return path


def default_image() -> Path:
    """Bookworm's cloud bzImage, fetched and cached by tests/material.py (in a child process)."""
    code = "import material; print(material.bookworm_cloud_bzimage())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", check=True,
                         capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def load_argv(image: Path, initrd: Path) -> list[str]:
    return [sys.executable, "-m", "pykexec", "load", "--dry-run", "--mode", "file", str(image),
            "--initrd", str(initrd), "--machine", str(MACHINE), "--no-require-signature",
            "--command-line", "console=ttyS0"]


def run(image: Path, runs: int, work: Path) -> dict[str, list[dict]]:
    """Every case ``runs`` times after one warm-up each, interleaved, the two loads in
    alternating order (so that neither always follows the other)."""
    cases = {label: load_argv(image, random_file(work / f"initrd-{size}", size))
             for label, size in INITRDS.items()}
    cases["python -c pass"] = [sys.executable, "-c", "pass"]
    for argv in cases.values():
        measure(argv)
    results: dict[str, list[dict]] = {label: [] for label in cases}
    for i in range(runs):
        order = list(cases) if i % 2 == 0 else [*reversed(INITRDS), "python -c pass"]
        for label in order:
            results[label].append(measure(cases[label]))
    return results


def summary(results: dict[str, list[dict]]) -> dict:
    """Medians of each case; the ratios of the two loads' medians, and the median of
    their ratios run by run (on a busy machine, neighbours in time share its load)."""
    med = {label: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "maxrss")}
           for label, rs in results.items()}
    small, large = (med[label] for label in INITRDS)
    pairs = zip(*(results[label] for label in INITRDS))
    return {"medians": med, "wall_ratio": large["wall"] / small["wall"],
            "paired_wall_ratio": statistics.median(b["wall"] / a["wall"] for a, b in pairs),
            "cpu_ratio": large["cpu"] / small["cpu"], "rss_growth": large["maxrss"] - small["maxrss"]}


def met(s: dict) -> tuple[bool, bool]:
    """(wall, RSS) targets: both wall ratios within 10%, and the RSS growth under 5 MiB."""
    wall = all(abs(s[k] - 1) < WALL_TARGET for k in ("wall_ratio", "paired_wall_ratio"))
    return wall, s["rss_growth"] < RSS_TARGET


def report(image: Path, runs: int, s: dict) -> str:
    lines = [f"{image.name}: load --dry-run --mode file, {runs} runs each, medians",
             f"{'case':<16} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13}"]
    for label, m in s["medians"].items():
        lines.append(f"{label:<16} {m['wall']:8.3f} {m['cpu']:8.3f} {m['maxrss'] / MiB:13.1f}")
    wall_ok, rss_ok = met(s)
    lines.append(f"200 MB / 1 MB: wall x{s['wall_ratio']:.3f} (run by run x{s['paired_wall_ratio']:.3f}; "
                 f"{'met' if wall_ok else 'MISSED'}: within {WALL_TARGET:.0%}), cpu x{s['cpu_ratio']:.3f}, "
                 f"peak RSS {s['rss_growth'] / MiB:+.1f} MiB ({'met' if rss_ok else 'MISSED'}: "
                 f"< {RSS_TARGET // MiB} MiB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--image", type=Path, help="bzImage to load (default: bookworm's cloud kernel)")
    ap.add_argument("--json", action="store_true", help="print the runs and the summary as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    image = args.image or default_image()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "pykexec")],
                   stdout=subprocess.DEVNULL, check=True)
    with tempfile.TemporaryDirectory(prefix="bench-load.") as work:
        results = run(image, args.runs, Path(work))
    s = summary(results)
    if args.json:
        print(json.dumps({"image": str(image), "runs": results, **s}, indent=1))
    print(report(image, args.runs, s), file=sys.stderr if args.json else sys.stdout)
    return 1 if args.check and not all(met(s)) else 0


if __name__ == "__main__":
    sys.exit(main())
