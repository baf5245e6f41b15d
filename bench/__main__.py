"""``python -m bench``: run every workload for every client, print and save the table.

Starts smtp-sink (and, for W6, a private Postfix), runs each client of each
workload in its own process (``bench.runner``; smtp-source directly), several
rounds with the client order rotated each round, checks the server received
every message, and writes ``bench/results/<timestamp>.{md,json}`` and
``bench/results/latest.md``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    DESCRIPTIONS,
    LOCAL_HOSTNAME,
    QUICK,
    RECIPIENT,
    SENDER,
    WORKLOADS,
    raw_message,
    status_kib,
    write_random_file,
)
from bench.delay import DelayProxy
from bench.servers import ROOT, SMTP_SOURCE, Postfix, Sink, Stamps, window_counts

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "smtplib"
SEND_CLIENTS = ["smtpsubmit", "smtpsubmit-async", "smtplib", "aiosmtplib", "smtp-source"]
POOL_CLIENTS = ["smtpsubmit-pool", "smtpsubmit-pool-async"]
POSTFIX_WORKLOADS = {"W6", "W6s", "W8c"}
# Bench-side client names that run a runner client with other settings: (client, --window).
ALIASES: dict[str, tuple[str, int | None]] = {
    "many-w1": ("smtpsubmit-many", 1),
    "many-w10": ("smtpsubmit-many", 10),
    "many-w100": ("smtpsubmit-many", 100),
    "pool-10k": ("smtpsubmit-pool", None),
    "pool-100k": ("smtpsubmit-pool", None),
    "iter-10k": ("smtpsubmit-pool-iter", None),
    "iter-100k": ("smtpsubmit-pool-iter", None),
    "pool-rate": ("smtpsubmit-pool-rate", None),
}
CLIENTS: dict[str, list[str]] = {
    "W1": SEND_CLIENTS,
    "W2": SEND_CLIENTS + POOL_CLIENTS,
    "W3": ["smtpsubmit", "smtpsubmit-async", "smtplib", "aiosmtplib"],
    "W3-big": ["smtpsubmit", "smtpsubmit-async", "smtplib", "aiosmtplib"],
    "W4": SEND_CLIENTS,
    "W5a": ["smtpsubmit", "smtplib"],
    "W5b": ["smtpsubmit", "smtplib"],
    "W6": ["smtpsubmit", "smtpsubmit-nochunking", "smtplib"],
    "W1s": ["smtpsubmit-many", "smtpsubmit-many-async", "smtplib", "smtp-source"],
    "W8": ["smtpsubmit-many", "smtpsubmit", "smtplib", "smtp-source"],
    "W8c": ["many-w1", "many-w10", "many-w100", "smtplib", "smtp-source"],
    "W4s": ["smtpsubmit-many", "smtpsubmit-many-async", "smtplib", "smtp-source"],
    "W6s": ["smtpsubmit-many", "smtpsubmit-many-nochunking", "smtplib", "smtp-source"],
    "RL": ["pool-rate"],
    "W7": ["iter-10k", "iter-100k", "pool-10k", "pool-100k"],
}
LABELS = {
    "smtpsubmit": "smtpsubmit Client",
    "smtpsubmit-async": "smtpsubmit AsyncClient",
    "smtpsubmit-nochunking": "smtpsubmit, CHUNKING off (DATA)",
    "smtpsubmit-many": "smtpsubmit Client.send_many",
    "smtpsubmit-many-async": "smtpsubmit AsyncClient.send_many",
    "smtpsubmit-many-nochunking": "smtpsubmit Client.send_many, CHUNKING off (DATA stream)",
    "smtplib": "smtplib",
    "aiosmtplib": "aiosmtplib",
    "smtp-source": "smtp-source (C)",
    "many-w1": "smtpsubmit Client.send_many, window=1",
    "many-w10": "smtpsubmit Client.send_many, window=10",
    "many-w100": "smtpsubmit Client.send_many, window=100",
    "pool-10k": "smtpsubmit Pool.send_many, 10,000 messages (1,000 --quick)",
    "pool-100k": "smtpsubmit Pool.send_many, 100,000 messages (10,000 --quick)",
    "iter-10k": "smtpsubmit Pool.send_iter, 10,000 messages (1,000 --quick)",
    "iter-100k": "smtpsubmit Pool.send_iter, 100,000 messages (10,000 --quick)",
    "pool-rate": "smtpsubmit Pool(max_connections=8, rate_limit=RateLimit(200, 1.0)).send_iter",
}
W2_LABELS = {
    "smtpsubmit": "smtpsubmit Client x 20 threads",
    "smtpsubmit-async": "smtpsubmit 20 AsyncClients",
    "smtplib": "smtplib x 20 threads",
    "aiosmtplib": "aiosmtplib 20 clients",
    "smtp-source": "smtp-source -s 20 (C)",
    "smtpsubmit-pool": "smtpsubmit Pool(max_connections=20).send_many",
    "smtpsubmit-pool-async": "smtpsubmit AsyncPool(max_connections=20).send_many",
}
COMPOSE_LABELS = {"smtpsubmit": "smtpsubmit Message", "smtplib": "EmailMessage (policy=SMTP)"}
# (workload, client, against, what, at least)
TARGETS = [
    ("W1", "smtpsubmit", "smtplib", "ratio", 2.0),
    ("W1", "smtpsubmit", "smtp-source", "ratio", 1.0),
    ("W4", "smtpsubmit", "smtplib", "ratio", 4.0),
    ("W4", "smtpsubmit", "smtp-source", "ratio", 2.0),
    ("W2", "smtpsubmit-async", "aiosmtplib", "ratio", 2.0),
    ("W2", "smtpsubmit-async", "smtplib", "ratio", 1.5),
    ("W3", "smtpsubmit", "smtplib", "ratio", 2.0),
    ("W3", "smtpsubmit", "", "rss", 40.0),
    ("W3-big", "smtpsubmit", "", "rss", 40.0),
    ("W5a", "smtpsubmit", "smtplib", "ratio", 3.0),
    ("W5b", "smtpsubmit", "smtplib", "ratio", 3.0),
    ("W1s", "smtpsubmit-many", "smtplib", "ratio", 3.0),
    ("W1s", "smtpsubmit-many", "smtp-source", "ratio", 2.0),
    ("W8", "smtpsubmit-many", "smtplib", "ratio", 3.5),
    ("W8c", "many-w100", "smtplib", "ratio", 20.0),
    ("W8c", "many-w100", "smtp-source", "ratio", 5.0),
    ("W2", "smtpsubmit-pool-async", "aiosmtplib", "ratio", 2.0),
    ("W2", "smtpsubmit-pool-async", "smtplib", "ratio", 2.0),
    ("W2", "smtpsubmit-pool", "smtplib", "ratio", 2.0),
    # peak RSS of the first client minus that of the second, at most (MiB)
    # (send_iter: the stream keeps only what is in flight; send_many's row, which keeps
    # every result, is in the table for comparison)
    ("W7", "iter-100k", "iter-10k", "rss-growth", 10.0),
    ("W4s", "smtpsubmit-many", "smtplib", "ratio", 6.0),
    # W6s, the client's share of a stream the server paces: reply waits per message (at
    # most), CPU per message against smtplib's (at most), throughput against smtp-source
    ("W6s", "smtpsubmit-many", "", "waits", 0.1),
    ("W6s", "smtpsubmit-many", "smtplib", "cpu-share", 0.5),
    ("W6s", "smtpsubmit-many", "smtp-source", "ratio", 1.0),
    # RL: messages in the first span (within 1 %), and the most in any 1-s window (at most)
    ("RL", "pool-rate", "", "rate-total", 2000.0),
    ("RL", "pool-rate", "", "rate-window", 200.0),
]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.specs: dict[str, dict[str, Any]] = {}
        for name in args.workloads:
            spec = dict(WORKLOADS[name])
            if args.quick:
                spec.update(QUICK.get(name, {}))
            self.specs[name] = spec
        self.sink: Sink | None = None
        self.postfix: Postfix | None = None
        self.stamps: Stamps | None = None
        self.runs: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.files: dict[str, Path] = {}

    # -- inputs -----------------------------------------------------------------------------

    def prepare_inputs(self) -> None:
        for name, spec in self.specs.items():
            if "file_size" in spec:
                size = int(spec["file_size"])
                path = self.workdir / f"attachment-{size}.bin"
                if not path.exists():
                    log(f"writing a {size / 1e6:g} MB attachment file")
                    write_random_file(path, size)
                self.files[name] = path
            if spec["kind"] == "send" and "smtp-source" in CLIENTS[name]:
                # smtp-source -F sends the file's lines with CRLF appended: the same bytes.
                path = self.workdir / f"message-{name}.txt"
                path.write_bytes(raw_message(0, int(spec["size"])).replace(b"\r\n", b"\n"))
                self.files[name] = path
        # Write the files out now: background writeback of hundreds of MB would steal CPU
        # from the first runs.
        os.sync()

    # -- one run ----------------------------------------------------------------------------

    def run_python(self, client: str, name: str, port: int) -> dict[str, Any]:
        spec = self.specs[name]
        runner_client, window = ALIASES.get(client, (client, None))
        cmd = [sys.executable, "-m", "bench.runner", runner_client, name, "--port", str(port)]
        cmd += ["--count", str(count_for(spec, client))]
        for key in ("size", "rcpts", "conns"):
            if key in spec:
                cmd += [f"--{key}", str(spec[key])]
        if window is not None:
            cmd += ["--window", str(window)]
        if spec["kind"] in ("attach", "compose-attach"):
            cmd += ["--file", str(self.files[name])]
        if name in POSTFIX_WORKLOADS:
            cmd += ["--to", Postfix.ADDRESS]
        timeout = 900 if name == "W3-big" else 180
        proc = subprocess.run(
            cmd, capture_output=True, timeout=timeout, cwd=ROOT, check=False, text=True
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        record: dict[str, Any] = json.loads(lines[-1])
        record["client"] = client
        return record

    def run_smtp_source(self, name: str, port: int) -> dict[str, Any]:
        """smtp-source, timed from spawn to exit; CPU from wait4, peak RSS from /proc."""
        spec = self.specs[name]
        count = count_for(spec, "smtp-source")
        to = Postfix.ADDRESS if name in POSTFIX_WORKLOADS else RECIPIENT
        cmd = [
            SMTP_SOURCE,
            "-d",  # keep the connection for the next message
            "-s", str(spec["conns"]),
            "-m", str(count),
            "-r", str(spec["rcpts"]),
            "-F", str(self.files[name]),
            "-f", SENDER,
            "-t", to,
            "-M", LOCAL_HOSTNAME,
            f"127.0.0.1:{port}",
        ]  # fmt: skip
        errors = self.workdir / "smtp-source.err"
        peak = [0]
        with errors.open("wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        # The parent's ru_maxrss is wrong for a vfork'd child (it counts the parent's
        # memory at exec), so the peak is VmHWM sampled from /proc while it runs.
        gone = threading.Event()

        def sample() -> None:
            while not gone.is_set():
                value = status_kib("VmHWM", proc.pid)
                if value is not None:
                    peak[0] = max(peak[0], value)
                gone.wait(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        killer = threading.Timer(180, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage
        finally:
            killer.cancel()
            gone.set()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
        if proc.returncode != 0:
            raise RuntimeError(
                f"smtp-source exit {proc.returncode}: {errors.read_text(errors='replace')[-2000:]}"
            )
        return {
            "client": "smtp-source",
            "workload": name,
            "messages": count,
            "octets": count * int(spec["size"]),
            "seconds": seconds,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_base_kib": None,
            "vmhwm_kib": peak[0] or None,
            "pid": proc.pid,
        }

    def run_one(self, rnd: int, name: str, client: str) -> None:
        spec = self.specs[name]
        server: Sink | Postfix | Stamps | None = None
        if spec["kind"] in ("send", "attach", "stream"):
            server = self.postfix if name in POSTFIX_WORKLOADS else self.sink
        elif spec["kind"] == "rate":
            server = self.stamps
        before = 0
        if isinstance(server, Sink | Stamps):
            before = server.messages()
        elif isinstance(server, Postfix):
            before = server.delivered()
        proxy: DelayProxy | None = None
        try:
            port = server.port if server else 0
            if spec.get("delay"):  # the long link (W8): a fresh proxy per run, closed below
                proxy = DelayProxy(port, one_way=float(spec["delay"]))
                port = proxy.port
            if client == "smtp-source":
                record = self.run_smtp_source(name, port)
            else:
                record = self.run_python(client, name, port)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            record = {"client": client, "workload": name, "error": str(exc)}
        finally:
            if proxy is not None:
                proxy.close()
        record["round"] = rnd
        if "error" not in record and server is not None:
            expected = before + int(record["messages"])
            if isinstance(server, Sink | Stamps):
                seen = server.wait_for_messages(expected) - before
            else:
                seen = server.wait_for_delivered(expected) - before
            record["server_received"] = seen
            if seen != record["messages"]:
                record["error"] = f"the server got {seen} of {record['messages']} messages"
            if isinstance(server, Stamps):
                in_span, most = window_counts(
                    server.since(before), float(spec["span"]), float(spec["per"])
                )
                record["in_span"], record["max_window"] = in_span, most
        record["throughput"] = throughput(record, spec)
        self.runs.append(record)
        if "error" in record:
            log(f"  {name:6} {client:22} FAILED: {record['error'][:300]}")
        else:
            unit = unit_of(spec)
            rss = record.get("vmhwm_kib")
            waits = record.get("waits")
            if waits is not None:
                record["round_trips"] = waits - record["window_waits"] - record["drain_waits"]
            n = record["messages"] or 1
            log(
                f"  {name:6} {client:22} {record['throughput']:10.1f} {unit:5} "
                f"cpu {record['cpu_s']:6.2f} s  peak {(rss or 0) / 1024:6.1f} MiB"
                + (
                    f"  waits/msg {waits / n:.3f} (window {record['window_waits'] / n:.3f}, "
                    f"drain {record['drain_waits'] / n:.3f}, round trips "
                    f"{record['round_trips'] / n:.3f})"
                    if waits is not None
                    else ""
                )
                + (f"  in span {record['in_span']}" if "in_span" in record else "")
                + (f"  max window {record['max_window']}" if "max_window" in record else "")
            )

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> None:
        self.prepare_inputs()
        needs_sink = any(
            s["kind"] in ("send", "attach", "stream") and n not in POSTFIX_WORKLOADS
            for n, s in self.specs.items()
        )
        if needs_sink:
            self.sink = Sink(self.workdir)
            log(f"smtp-sink on port {self.sink.port}: {self.sink.command}")
        if any(s["kind"] == "rate" for s in self.specs.values()):
            self.stamps = Stamps()
            log(f"RL server: {self.stamps.command}")
        if POSTFIX_WORKLOADS & set(self.specs):
            try:
                self.postfix = Postfix()
                log(f"Postfix: {self.postfix.command}")
            except Exception as exc:
                for name in POSTFIX_WORKLOADS & set(self.specs):
                    self.skipped[name] = f"Postfix did not start: {exc}"[:500]
                    log(f"{name} skipped: {self.skipped[name]}")
        for rnd in range(self.args.rounds):
            log(f"round {rnd + 1}/{self.args.rounds}")
            for name in self.specs:
                if name in self.skipped:
                    continue
                clients = [c for c in CLIENTS[name] if c in self.args.clients]
                shift = rnd % len(clients) if clients else 0
                for client in clients[shift:] + clients[:shift]:  # a new order each round
                    self.run_one(rnd, name, client)

    def stop(self) -> None:
        if self.sink is not None:
            self.sink.stop()
            self.sink = None
        if self.postfix is not None:
            self.postfix.stop()
            self.postfix = None
        if self.stamps is not None:
            self.stamps.stop()
            self.stamps = None


# -- numbers ------------------------------------------------------------------------------------


def count_for(spec: dict[str, Any], client: str) -> int:
    """The messages ``client`` sends in this workload (``counts`` overrides ``count``)."""
    counts: dict[str, int] = spec.get("counts", {})
    return int(counts.get(client, spec["count"]))


def unit_of(spec: dict[str, Any]) -> str:
    return "MB/s" if spec["kind"] == "attach" else "msg/s"


def throughput(record: dict[str, Any], spec: dict[str, Any]) -> float | None:
    if "error" in record or not record.get("seconds"):
        return None
    if spec["kind"] == "attach":
        return float(spec["file_size"]) / 1e6 / float(record["seconds"])
    return float(record["messages"]) / float(record["seconds"])


def _by_round(runs: list[dict[str, Any]], name: str, client: str) -> dict[int, dict[str, Any]]:
    return {
        r["round"]: r
        for r in runs
        if r["workload"] == name and r["client"] == client and "error" not in r
    }


def ratio(runs: list[dict[str, Any]], name: str, client: str, against: str) -> float | None:
    """Median over rounds of the throughput ratio measured in the same round."""
    mine, theirs = _by_round(runs, name, client), _by_round(runs, name, against)
    ratios = [mine[r]["throughput"] / theirs[r]["throughput"] for r in mine if r in theirs]
    return statistics.median(ratios) if ratios else None


def rss_growth(rows: list[dict[str, Any]], name: str, client: str, against: str) -> float | None:
    peaks = {r["client"]: r["peak_rss_mib"] for r in rows if r["workload"] == name}
    if peaks.get(client) is None or peaks.get(against) is None:
        return None
    return float(peaks[client] - peaks[against])


def _median_per_msg(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] / r["messages"] for r in runs if r.get(key) is not None and r["messages"]]
    return statistics.median(values) if values else None


def summarize(bench: Bench) -> list[dict[str, Any]]:
    rows = []
    for name, spec in bench.specs.items():
        for client in CLIENTS[name]:
            ok = list(_by_round(bench.runs, name, client).values())
            every = [r for r in bench.runs if r["workload"] == name and r["client"] == client]
            if not every:
                continue
            rss = [r["vmhwm_kib"] for r in ok if r.get("vmhwm_kib")]
            rows.append(
                {
                    "workload": name,
                    "client": client,
                    "unit": unit_of(spec),
                    "rounds": len(ok),
                    "failed": len(every) - len(ok),
                    "throughput": statistics.median([r["throughput"] for r in ok]) if ok else None,
                    "min": min((r["throughput"] for r in ok), default=None),
                    "max": max((r["throughput"] for r in ok), default=None),
                    "vs_smtplib": ratio(bench.runs, name, client, BASELINE),
                    "cpu_s": statistics.median([r["cpu_s"] for r in ok]) if ok else None,
                    "peak_rss_mib": max(rss) / 1024 if rss else None,
                    "waits_per_msg": _median_per_msg(ok, "waits"),
                    "round_trips_per_msg": _median_per_msg(ok, "round_trips"),
                    "cpu_per_msg": _median_per_msg(ok, "cpu_s"),
                    "in_span": min((r["in_span"] for r in ok if "in_span" in r), default=None),
                    "max_window": max(
                        (r["max_window"] for r in ok if "max_window" in r), default=None
                    ),
                }
            )
    return rows


def check_targets(bench: Bench, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, client, against, what, goal in TARGETS:
        if name not in bench.specs:
            continue
        if what == "ratio":
            value = ratio(bench.runs, name, client, against)
            text = f"{name}: {label(name, client)} >= {goal:g}x {label(name, against)}"
        elif what == "rss-growth":
            value = rss_growth(rows, name, client, against)
            text = f"{name}: peak RSS, {label(name, client)} minus {label(name, against)}"
            text += f" < {goal:g} MiB"
        elif what in ("waits", "cpu-share", "rate-total", "rate-window"):
            value, text = _row_target(rows, name, client, against, what, goal)
        else:
            row = next((r for r in rows if r["workload"] == name and r["client"] == client), None)
            value = row["peak_rss_mib"] if row else None
            text = f"{name}: {label(name, client)} peak RSS <= {goal:g} MiB"
        met = None if value is None else (value >= goal if what == "ratio" else value <= goal)
        if what == "rss-growth" and value is not None:
            met = value < goal
        if what == "rate-total" and value is not None:
            met = abs(value - goal) <= goal / 100
        out.append({"target": text, "value": value, "goal": goal, "what": what, "met": met})
    return out


def _row_target(
    rows: list[dict[str, Any]], name: str, client: str, against: str, what: str, goal: float
) -> tuple[float | None, str]:
    """The value and wording of a target read from the summary rows."""
    row = next((r for r in rows if r["workload"] == name and r["client"] == client), None)
    who = label(name, client)
    if what == "waits":
        value = row and row["round_trips_per_msg"]
        return value, f"{name}: {who}, round trips waited per message < {goal:g}"
    if what == "cpu-share":
        other = next((r for r in rows if r["workload"] == name and r["client"] == against), None)
        mine, theirs = row and row["cpu_per_msg"], other and other["cpu_per_msg"]
        value = mine / theirs if mine is not None and theirs else None
        return value, f"{name}: {who}, CPU per message <= {goal:g} x {label(name, against)}'s"
    if what == "rate-total":
        text = f"{name}: {who}, delivered in the first 10 s = {goal:,.0f} +- 1 %"
        return (row and row["in_span"]), text
    return (row and row["max_window"]), f"{name}: {who}, most in any 1-s window <= {goal:g}"


# -- output -------------------------------------------------------------------------------------


def label(name: str, client: str) -> str:
    if name == "W2":
        return W2_LABELS.get(client, client)
    if name.startswith("W5"):
        return COMPOSE_LABELS.get(client, client)
    return LABELS.get(client, client)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "msg/s":
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def markdown(bench: Bench, meta: dict[str, Any], rows: list[dict[str, Any]], targets: Any) -> str:
    lines = [
        f"# smtpsubmit benchmark — {meta['started']}",
        "",
        f"`python -m bench {' '.join(meta['argv'])}` — {meta['rounds']} round(s)"
        f"{' (quick mode: smaller workloads)' if meta['quick'] else ''}; "
        f"{meta['cpu']} ({meta['cpus']} CPUs), Python {meta['python']}, "
        f"smtpsubmit {meta['smtpsubmit']} (commit {meta.get('commit', 'unknown')}, plus "
        f"uncommitted changes if any), aiosmtplib {meta['aiosmtplib']}, "
        f"Postfix {meta['postfix']}.",
        "",
        "Throughput is the median over rounds; *vs smtplib* is the median of the ratios "
        "measured in the same round; CPU is the client process's user+system time for "
        "the timed part (whole process for smtp-source); peak RSS is the client process's "
        "VmHWM (largest over rounds). The server is smtp-sink (W1-W4, W1s, W7, W8) or a "
        "private Postfix smtpd (W6, W8c); W8/W8c go through a delay proxy (10 ms each "
        "way); W5 has no network.",
        "",
        "| Workload | Client | Throughput | min-max | vs smtplib | CPU s | Peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        name, unit = row["workload"], row["unit"]
        thr = row["throughput"]
        shown = f"{_fmt(thr, unit)} {unit}" if thr is not None else "failed"
        spread = f"{_fmt(row['min'], unit)}-{_fmt(row['max'], unit)}" if thr else ""
        vs = f"{row['vs_smtplib']:.2f}x" if row["vs_smtplib"] is not None else "-"
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        lines.append(
            f"| {name} {DESCRIPTIONS[name]} | {label(name, row['client'])}{failed} | {shown} | "
            f"{spread} | {vs} | {_fmt(row['cpu_s'])} | {_fmt(row['peak_rss_mib'])} |"
        )
    for name, why in bench.skipped.items():
        lines.append(f"| {name} {DESCRIPTIONS[name]} | skipped: {why} | | | | | |")
    lines += ["", "## Targets", "", "| Target | Measured | Met |", "|---|---:|---|"]
    for t in targets:
        if t["value"] is None:
            measured, met = "not measured", "-"
        elif t["what"] == "ratio":
            measured = f"{t['value']:.2f}x"
            met = "yes" if t["met"] else f"**no** ({t['value'] / t['goal']:.0%} of the target)"
        elif t["what"] == "rss-growth":
            measured = f"{t['value']:+.1f} MiB"
            met = "yes" if t["met"] else f"**no** ({t['value'] - t['goal']:.1f} MiB over)"
        elif t["what"] in ("waits", "cpu-share"):
            measured = f"{t['value']:.3f}" if t["what"] == "waits" else f"{t['value']:.2f}x"
            met = "yes" if t["met"] else f"**no** ({t['value'] / t['goal']:.1f}x the limit)"
        elif t["what"] in ("rate-total", "rate-window"):
            measured = f"{t['value']:,.0f}"
            met = "yes" if t["met"] else "**no**"
        else:
            measured = f"{t['value']:.1f} MiB"
            met = "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {measured} | {met} |")
    errors = [r for r in bench.runs if "error" in r]
    if errors:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- round {r['round'] + 1}, {r['workload']}, {r['client']}: {r['error'][:300]}"
            for r in errors
        ]
    return "\n".join(lines) + "\n"


def report(path: Path) -> str:
    """The Markdown table of a saved run (its JSON file), recomputed from the raw runs."""
    raw = json.loads(path.read_text())
    bench = Bench.__new__(Bench)
    bench.specs, bench.runs, bench.skipped = raw["workloads"], raw["runs"], raw["skipped"]
    rows = summarize(bench)
    return markdown(bench, raw["meta"], rows, check_targets(bench, rows))


def environment(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        postfix = subprocess.run(
            ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        postfix = "unknown"
    try:  # read-only: which library version was measured
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "argv": argv,
        "rounds": args.rounds,
        "quick": args.quick,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "smtpsubmit": version("smtpsubmit"),
        "aiosmtplib": version("aiosmtplib"),
        "postfix": postfix or "unknown",
        "platform": platform.platform(),
    }


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the servers are stopped in ``finally``."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, help="rounds per workload (default 3; 1 --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads, a smoke run")
    parser.add_argument("--big", action="store_true", help="also W3 with a 500 MB attachment")
    parser.add_argument(
        "--only",
        help="comma-separated workloads to run "
        "(W1,W2,W3,W3-big,W4,W5a,W5b,W6,W1s,W8,W8c,W4s,W6s,RL,W7)",
    )
    parser.add_argument("--clients", help="comma-separated clients to run (default: all)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no files")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print the table of a saved run and exit"
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    names = [n for n in WORKLOADS if n != "W3-big" or args.big]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(wanted) - set(WORKLOADS)
        if unknown:
            parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
        names = [n for n in WORKLOADS if n in wanted]
    args.workloads = names
    everyone = {c for cs in CLIENTS.values() for c in cs}
    args.clients = {c.strip() for c in args.clients.split(",")} if args.clients else everyone
    if args.clients - everyone:
        parser.error(f"unknown client(s): {', '.join(sorted(args.clients - everyone))}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report:
        print(report(args.report), end="")
        return 0
    meta = environment(args, argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smtpsubmit-bench-") as tmp, _sigterm_as_exit():
        bench = Bench(args, Path(tmp))
        try:
            bench.run()
        finally:
            bench.stop()
    meta["seconds"] = round(time.monotonic() - t0, 1)
    rows = summarize(bench)
    targets = check_targets(bench, rows)
    table = markdown(bench, meta, rows, targets)
    print(table)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        raw = {
            "meta": meta,
            "workloads": bench.specs,
            "runs": bench.runs,
            "summary": rows,
            "targets": targets,
            "skipped": bench.skipped,
        }
        (RESULTS / f"{stamp}.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
        (RESULTS / f"{stamp}.md").write_text(table)
        (RESULTS / "latest.md").write_text(table)
        log(f"wrote {RESULTS / (stamp + '.md')}, .json and latest.md ({meta['seconds']} s)")
    return 1 if any("error" in r for r in bench.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
