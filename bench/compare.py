"""Before and after in the same rounds: ``python -m bench.compare BASE W1s|W2 [--rounds N]``.

``BASE`` is another copy of the project (for instance ``git archive COMMIT |
tar -x -C /tmp/base``). Each round runs this checkout's smtpsubmit clients,
the same clients from ``BASE`` and the reference clients (smtplib, and
aiosmtplib for W2) once each, one process per run, in an order rotated every
round, all against one smtp-sink. Prints each run and the median over rounds
of the same-round ratios, and the CPU per message.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.servers import ROOT, Sink

CLIENTS = {
    "W1s": (["smtpsubmit-many", "smtpsubmit-many-async"], ["smtplib"]),
    "W2": (["smtpsubmit-pool-async", "smtpsubmit-pool"], ["smtplib", "aiosmtplib"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("base", type=Path, help="another copy of the project (with src/)")
    parser.add_argument("workload", choices=sorted(CLIENTS))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    ours, references = CLIENTS[args.workload]
    runs = [("before", args.base.resolve(), c) for c in ours]
    runs += [("after", ROOT, c) for c in ours] + [("", ROOT, c) for c in references]
    results: dict[str, list[dict[str, float]]] = {label(r): [] for r in runs}
    with tempfile.TemporaryDirectory(prefix="smtpsubmit-compare-") as tmp:
        sink = Sink(Path(tmp))
        try:
            for n in range(args.rounds):
                shift = n % len(runs)
                for run in runs[shift:] + runs[:shift]:
                    results[label(run)].append(run_one(run, args.workload, sink.port))
                line = "  ".join(f"{k} {v[-1]['rate']:,.0f}" for k, v in results.items())
                print(f"round {n + 1}: {line}", flush=True)
        finally:
            sink.stop()
    print(f"\nmedian over {args.rounds} rounds (ratios measured in the same round):")
    for name, values in results.items():
        rate = statistics.median(v["rate"] for v in values)
        cpu = statistics.median(v["cpu_us"] for v in values)
        ratios = []
        for ref in references:
            pairs = zip(values, results[ref], strict=True)
            ratios.append(
                f"{statistics.median(v['rate'] / r['rate'] for v, r in pairs):.2f}x {ref}"
            )
        print(f"  {name:32} {rate:8,.0f} msg/s  {cpu:6.1f} us CPU/msg  " + "  ".join(ratios))
    return 0


def label(run: tuple[str, Path, str]) -> str:
    return f"{run[2]} ({run[0]})" if run[0] else run[2]


def run_one(run: tuple[str, Path, str], workload: str, port: int) -> dict[str, float]:
    _, root, client = run
    env = dict(os.environ, PYTHONPATH=f"{root / 'src'}{os.pathsep}{root}")
    cmd = [sys.executable, "-m", "bench.runner", client, workload, "--port", str(port)]
    proc = subprocess.run(
        cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=True
    )
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "rate": record["messages"] / record["seconds"],
        "cpu_us": record["cpu_s"] / record["messages"] * 1e6,
    }


if __name__ == "__main__":
    sys.exit(main())
