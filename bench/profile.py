"""Profile smtpsubmit on a workload: ``python -m bench.profile W1|W1s|W4|W5a [--top N] [--py-spy]``.

For the stream (W1s) pass ``--client smtpsubmit-many`` (or ``smtpsubmit-many-async``).

Starts its own smtp-sink, then runs the sync Client on the workload under
cProfile and prints the top functions by own time and by cumulative time.
``--py-spy`` instead records the runner with py-spy (``pip install py-spy``)
and writes a flame graph SVG next to the results.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.runner import main as runner_main
from bench.servers import ROOT, Sink

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("workload", choices=["W1", "W1s", "W2", "W4", "W5a", "W5b"])
    parser.add_argument("--client", default="smtpsubmit")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", action="store_true", help="record with py-spy instead")
    args = parser.parse_args(argv)
    runner_args = [args.client, args.workload, "--count", str(args.count)]
    with tempfile.TemporaryDirectory(prefix="smtpsubmit-profile-") as tmp:
        sink = None
        try:
            if not args.workload.startswith("W5"):
                sink = Sink(Path(tmp))
                runner_args += ["--port", str(sink.port)]
            if args.workload == "W5b":
                from bench.common import write_random_file

                path = Path(tmp) / "attachment.bin"
                write_random_file(path, 1_000_000)
                runner_args += ["--file", str(path)]
            if args.py_spy:
                return record_py_spy(args, runner_args)
            profiler = cProfile.Profile()
            profiler.runcall(runner_main, runner_args)
        finally:
            if sink is not None:
                sink.stop()
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order)
        stats.print_stats(args.top)
        print(f"==== by {order} ====")
        print(out.getvalue().split("\n", 6)[-1])
    return 0


def record_py_spy(args: argparse.Namespace, runner_args: list[str]) -> int:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    svg = RESULTS / f"py-spy-{args.client}-{args.workload}.svg"
    cmd = [py_spy, "record", "--rate", "1000", "--output", str(svg), "--"]
    cmd += [sys.executable, "-m", "bench.runner", *runner_args]
    proc = subprocess.run(cmd, cwd=ROOT, timeout=300, check=False)
    print(f"flame graph: {svg}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
