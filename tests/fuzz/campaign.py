#!/usr/bin/env python3
"""A coverage-guided fuzzing campaign (atheris/libFuzzer) over pykexec's parsers and planner.

    python tests/fuzz/campaign.py --seconds 600            # each target, 10 minutes
    python tests/fuzz/campaign.py --seconds 20 --json      # what CI runs

Each target runs in its own process, seeded from the checked-in corpora
(copied: the repository is never written), with libFuzzer's bounds
``-timeout=1 -rss_limit_mb=512``.  Exit status 1 when any target crashed;
the crashing input is kept and named.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNNER = """
import sys
sys.path.insert(0, {root!r})
import atheris
with atheris.instrument_imports(include=["pykexec"]):
    from tests.fuzz.targets import check
import gc
gc.freeze()  # pefile runs gc.collect() on every image it rejects: keep the start-up heap out of it
atheris.Setup(sys.argv, lambda data: check({target!r}, data))
atheris.Fuzz()
"""


def run_target(target: str, seconds: int, workdir: Path) -> dict:
    from tests.fuzz.targets import DICTS, SEEDS
    corpus = workdir / target / "corpus"
    for seed_dir in SEEDS[target]:
        shutil.copytree(seed_dir, corpus, dirs_exist_ok=True)
    flat = workdir / target / "seeds"
    flat.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(p for p in corpus.rglob("*") if p.is_file()):
        shutil.copy(f, flat / f"{i:04d}-{f.name}")
    artifacts = workdir / target / "crashes"
    artifacts.mkdir()
    cmd = [sys.executable, "-c", RUNNER.format(root=str(ROOT), target=target),
           f"-max_total_time={seconds}", "-timeout=1", "-rss_limit_mb=512",
           f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
           *([f"-dict={DICTS[target]}"] if target in DICTS else []), str(flat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    log = proc.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    crashes = sorted(p.name for p in artifacts.iterdir())
    return {"target": target, "seconds": seconds, "inputs": int(runs[-1]) if runs else 0,
            "exit": proc.returncode, "crashes": crashes,
            "tail": "" if proc.returncode == 0 else log[-3000:]}


def main(argv: list[str] | None = None) -> int:
    from tests.fuzz.targets import TARGETS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=60, help="per target")
    p.add_argument("--target", action="append", choices=sorted(TARGETS))
    p.add_argument("--keep", type=Path, help="directory to keep crashes and grown corpora in")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pykexec-fuzz-"))
    results = [run_target(t, args.seconds, work) for t in (args.target or sorted(TARGETS))]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['target']:12} {r['inputs']:>10} inputs in {r['seconds']} s, "
                  f"{len(r['crashes'])} crashes, exit {r['exit']}")
            if r["tail"]:
                print(r["tail"])
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r["crashes"] or r["exit"] for r in results) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
