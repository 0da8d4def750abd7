"""`make bench`: whole-process start-up of the operator CLI (issue 18).

  python -m tests.bench.cli_bench [--runs 10] [--sandboxes 200] [--before DIR | --before-ref REF]

Each case is a fresh `python -m netagent ...` process, timed from spawn to
exit (wall) with its CPU time (user + sys, from wait4: less moved by other
work on a shared box): `--help`, `status` against a running agent, and
`ls --json` with --sandboxes allocated (targets are for 2,000: pass
--sandboxes 2000; the default keeps `make bench` short), `python -c pass` for
the interpreter's own floor, and the daemon's own import (kept, not a target).
The agent is a real `netagent serve` in a test bed netns with the shipped
background intervals; both sides' packages are byte-compiled first, as an
installed CLI is. --before DIR (another checkout) or --before-ref REF (a
git ref of this repository, `git archive`d) measures an older CLI against the
same agent, interleaved round by round with this tree's (A, B, B, A, ...), so
load from other work hits both sides alike. Prints a summary and JSON with
medians, spread, meets_target per target, failed runs (counted with their
time; e.g. a 10 s deadline missed under load) and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import Testbed

TARGETS_MS = {"help": 150.0, "status": 300.0, "ls_json": 500.0}
# The test suite's 0.5 s metrics and ruleset checks make a 2,000-sandbox agent
# spend most of a core re-reading 4,000 links; an operator's agent runs these.
SHIPPED_INTERVALS = {"metrics_refresh_s": 5.0, "ruleset_check_interval_s": 1.0}


def cases(config: Path, sandboxes: int) -> dict[str, tuple[list[str], str | None]]:
    """name -> (python argv, a substring stdout must hold)."""
    cli = ["-m", "netagent"]
    return {
        "help": ([*cli, "--help"], "usage: netagent"),
        "status": ([*cli, "status", "--config", str(config)], "ruleset"),
        "ls_json": ([*cli, "ls", "--json", "--config", str(config)], f'"bench-{sandboxes - 1}"'),
        "daemon_import": (["-c", "import netagent.daemon"], None),
        "python_startup": (["-c", "pass"], None),   # the floor every case pays
    }


def timed_once(src: str, argv: list[str], check: str | None) -> tuple[float, float, str | None]:
    """(wall ms, CPU ms, why it failed or None) of one whole process run from checkout `src`."""
    env = {**os.environ, "PYTHONPATH": src}
    cpu_before = _reaped_children_cpu_ms()
    start = time.perf_counter()
    res = subprocess.run([sys.executable, *argv], cwd=src, env=env, capture_output=True, text=True, timeout=120)
    wall = (time.perf_counter() - start) * 1000
    failed = None
    if res.returncode != 0 or (check is not None and check not in res.stdout):
        failed = f"exit {res.returncode}: {(res.stderr or res.stdout)[-300:].strip()}"
    return wall, _reaped_children_cpu_ms() - cpu_before, failed


def _reaped_children_cpu_ms() -> float:
    """User + sys CPU of every child reaped so far (the running agent is not)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1000


def summarize(walls: list[float], cpus: list[float], failures: list[str]) -> dict:
    """A failed run (e.g. the CLI's 10 s deadline under load) counts with its time."""
    return {"median_ms": round(statistics.median(walls), 1), "min_ms": round(min(walls), 1),
            "max_ms": round(max(walls), 1), "cpu_median_ms": round(statistics.median(cpus), 1),
            "failures": failures}


def measure(sides: dict[str, str], config: Path, runs: int, sandboxes: int) -> dict[str, dict]:
    """Every case on every side once per round; the sides' order alternates."""
    todo = cases(config, sandboxes)
    samples: dict[str, dict[str, tuple[list, list, list]]] = {
        side: {name: ([], [], []) for name in todo} for side in sides}
    loads = []
    order = list(sides)
    for r in range(runs):
        for side in order if r % 2 == 0 else order[::-1]:
            for name, (argv, check) in todo.items():
                wall, cpu, failed = timed_once(sides[side], argv, check)
                samples[side][name][0].append(wall)
                samples[side][name][1].append(cpu)
                if failed:
                    samples[side][name][2].append(failed)
        loads.append(os.getloadavg()[0])
    out: dict[str, dict] = {}
    for side in sides:
        out[side] = {name: summarize(*samples[side][name]) for name in todo}
        for name, target in TARGETS_MS.items():
            out[side][name] |= {"target_ms": target, "meets_target": out[side][name]["median_ms"] <= target}
    out["loadavg_1m"] = {"min": min(loads), "median": round(statistics.median(loads), 2), "max": max(loads)}
    return out


def allocate(daemon: Daemon, sandboxes: int) -> None:
    with daemon.client(timeout=120) as c:
        for i in range(sandboxes):
            c.allocate(f"bench-{i}")


def archive(ref: str, into: str) -> str:
    """`git archive` of `ref` (this repository) into `into`."""
    data = subprocess.run(["git", "archive", ref], cwd=sh.REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=data, check=True)
    return into


def compile_tree(src: str) -> None:
    """Bytecode for the side's package, as an installed CLI has: with
    PYTHONDONTWRITEBYTECODE set (it is on the shared box) every run would
    otherwise compile each module without a .pyc, tens of ms."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(src, "netagent")], check=True,
                   capture_output=True, timeout=300)


def run(runs: int, sandboxes: int, before: str | None = None, before_ref: str | None = None) -> dict:
    """A test bed, a real agent with `sandboxes` allocations, then the timings."""
    bed = Testbed().create()
    daemon = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = write_config(bed, Path(tmp), pool_size=min(sandboxes, 64), registry_url="",
                                  **SHIPPED_INTERVALS)
            daemon = Daemon(config).start(timeout=120)
            started = time.monotonic()
            allocate(daemon, sandboxes)
            result: dict = {"runs": runs, "sandboxes": sandboxes, "allocate_s": round(time.monotonic() - started, 1)}
            sides = {"after": sh.REPO}
            if before_ref:
                os.mkdir(Path(tmp) / "before")
                before = archive(before_ref, str(Path(tmp) / "before"))
                result["before_ref"] = before_ref
            if before:
                sides["before"] = os.path.abspath(before)
            for src in sides.values():
                compile_tree(src)
            result |= measure(sides, config, runs, sandboxes)
            daemon.stop()
            return result
    finally:
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        bed.destroy()


def summary(result: dict) -> str:
    sides = [s for s in ("before", "after") if s in result]
    lines = [f"CLI start-up, {result['sandboxes']} sandboxes, median of {result['runs']} (wall ms; CPU ms), "
             f"load {result['loadavg_1m']['median']}"]
    for name in (*TARGETS_MS, "daemon_import", "python_startup"):
        target = f"target {TARGETS_MS[name]:.0f}" if name in TARGETS_MS else "no target"
        cells = []
        for side in sides:
            case = result[side][name]
            met = "" if "meets_target" not in case else (" met" if case["meets_target"] else " NOT met")
            met += f" ({len(case['failures'])} runs FAILED)" if case["failures"] else ""
            cells.append(f"{side} {case['median_ms']:.0f} ({case['cpu_median_ms']:.0f} cpu){met}")
        lines.append(f"  {name:15} {target:11} " + "  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--sandboxes", type=int, default=200, help="allocations for ls --json (targets: 2000)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--before", metavar="DIR", help="another checkout's CLI, measured in the same sitting")
    group.add_argument("--before-ref", metavar="REF", help="a git ref of this repository, as --before")
    ap.add_argument("--out", default="bench-results/cli.json")
    args = ap.parse_args()
    result = run(args.runs, args.sandboxes, args.before, args.before_ref)
    text = json.dumps(result, indent=2)
    print(summary(result))
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
