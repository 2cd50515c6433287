"""Where the test suite's time goes: a pytest plugin that writes one JSON line per test, and a summary.

Each line holds the test, its xdist worker, start and end (wall clock), the CPU seconds its worker process used
during it (all threads) and those of the processes it started, its involuntary context switches, and the worker's
thread count with the threads that used CPU. CPU time far above the same test's time alone, with hundreds of
involuntary switches a second, means more runnable threads than cores (oversubscribed thread pools), not a slow
host. Usage:
    SUITE_TIMELINE=runs/timeline.jsonl python -m pytest -n auto --dist loadgroup -p eval.suite_timeline
    python -m eval.suite_timeline runs/timeline.jsonl [--against runs/alone.jsonl] [--top 20]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

_started: dict[str, tuple] = {}


def _thread_ticks() -> dict[str, int]:
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:   # the thread ended
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])   # utime + stime
    return ticks


def pytest_runtest_logstart(nodeid, location):
    if os.environ.get("SUITE_TIMELINE"):
        _started[nodeid] = (time.time(), resource.getrusage(resource.RUSAGE_SELF),
                            resource.getrusage(resource.RUSAGE_CHILDREN), _thread_ticks())


def pytest_runtest_logfinish(nodeid, location):
    path = os.environ.get("SUITE_TIMELINE")
    if not path or nodeid not in _started:
        return
    start, own, children, ticks = _started.pop(nodeid)
    own_now, children_now, ticks_now = (resource.getrusage(resource.RUSAGE_SELF),
                                        resource.getrusage(resource.RUSAGE_CHILDREN), _thread_ticks())
    cpu = lambda a, b: (b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)  # noqa: E731
    record = {"test": nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER", "-"), "start": start, "end": time.time(),
              "cpu_s": round(cpu(own, own_now), 3), "children_cpu_s": round(cpu(children, children_now), 3),
              "involuntary_switches": own_now.ru_nivcsw - own.ru_nivcsw, "threads": len(ticks_now),
              "busy_threads": sum(ticks_now[t] - ticks.get(t, 0) > 1 for t in ticks_now)}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def load(path: str) -> dict[str, dict]:
    """One record per test: under xdist the controller logs each test too (worker "-"), the worker's is kept."""
    runs: dict[str, dict] = {}
    with open(path) as f:
        for r in map(json.loads, f):
            if r["test"] not in runs or runs[r["test"]]["worker"] == "-":
                runs[r["test"]] = r
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description="Summarise a suite timeline written with -p eval.suite_timeline.")
    parser.add_argument("timeline")
    parser.add_argument("--against", help="a timeline of the same tests run another way (e.g. one at a time)")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    runs = load(args.timeline)
    alone = load(args.against) if args.against else {}
    first = min(r["start"] for r in runs.values())
    print(f"{len(runs)} tests, {max(r['end'] for r in runs.values()) - first:.1f} s from the first start to the last end")
    print("  wall    cpu  switch/s busy  ", "alone  " if alone else "", "test", sep="")
    for r in sorted(runs.values(), key=lambda r: r["end"] - r["start"], reverse=True)[:args.top]:
        wall = r["end"] - r["start"]
        other = alone.get(r["test"])
        was = f"{other['end'] - other['start']:6.1f} " if other else ("     - " if alone else "")
        print(f"{wall:6.1f} {r['cpu_s'] + r['children_cpu_s']:6.1f} {r['involuntary_switches'] / max(wall, 1e-3):8.0f} "
              f"{r['busy_threads']:4d}  {was}{r['test']}")


if __name__ == "__main__":
    main()
