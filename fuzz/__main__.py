"""``python -m fuzz [--seconds 60] [--target reply|message|ready] [--engine auto|atheris|random]``.

The budget is shared between the chosen targets. With atheris each target runs
in its own process (``atheris`` needs to own the process), coverage-guided and
seeded from ``fuzz/corpus/<target>/``; without it, a mutation loop over the same
seeds runs in this process. Exit status 0: no defect found; 1: a defect, whose
input is written to ``fuzz/crashes/``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
NAMES = ("reply", "message", "ready")


def _seeds(name: str) -> list[bytes]:
    folder = CORPUS / name
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()] or [b""]


def _save(name: str, data: bytes) -> Path:
    CRASHES.mkdir(exist_ok=True)
    path = CRASHES / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


_TOKENS = [
    b"\r\n", b"\n", b"\r", b"\x00", b"250-", b"250 ", b"354 ", b"421 ", b"5.7.1 ", b"\r\n.\r\n",
    b".", b"..", b"=?utf-8?q?", b"?=", b"Bcc: ", b"\xff", b"\xc3\xa9", "\u202e".encode(),
    b" " * 90, b"x" * 1000, b"AUTH PLAIN LOGIN", b"SIZE 99999999999999999999", b'"', b"<", b">",
]  # fmt: skip


def _mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        pos = rng.randint(0, len(out))
        if choice < 0.3:
            out[pos:pos] = rng.choice(_TOKENS)
        elif choice < 0.5 and out:
            del out[pos : pos + rng.randint(1, 16)]
        elif choice < 0.7:
            out[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif choice < 0.85 and out:
            start = rng.randrange(len(out))
            out[pos:pos] = out[start : start + rng.randint(1, 64)] * rng.randint(1, 20)
        else:
            other = rng.choice(seeds)
            cut = rng.randint(0, len(other))
            out[pos:] = other[cut:]
    return bytes(out[: 1 << 18])


def run_random(name: str, seconds: float, seed: int) -> int:
    from fuzz.targets import TARGETS

    target = TARGETS[name]
    seeds = _seeds(name)
    rng = random.Random(seed)  # noqa: S311 - fuzzing, not cryptography
    pool = list(seeds)
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(pool), seeds)
        try:
            target(data)
        except Exception:
            path = _save(name, data)
            traceback.print_exc()
            print(f"fuzz[{name}]: defect after {runs} runs; input saved to {path}")
            return 1
        runs += 1
        if runs % 50 == 0 and len(pool) < 500:
            pool.append(data)  # keep some variety without coverage feedback
    print(f"fuzz[{name}]: {runs} runs in {seconds:.0f} s, no defect (random engine, seed {seed})")
    return 0


def run_atheris(name: str, seconds: float) -> int:
    """One target in a child process: ``python -m fuzz.atheris_main NAME -max_total_time=N``."""
    CRASHES.mkdir(exist_ok=True)
    work = HERE / ".corpus-work" / name  # grows during the run; seeds stay untouched
    work.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "fuzz.atheris_main",
        name,
        f"-max_total_time={max(int(seconds), 1)}",
        f"-artifact_prefix={CRASHES}/{name}-",
        "-rss_limit_mb=2048",
        "-max_len=65536",
        "-print_final_stats=1",
        str(work),
        str(CORPUS / name),
    ]
    done = subprocess.run(command, cwd=HERE.parent, check=False)  # noqa: S603 - our own module
    print(f"fuzz[{name}]: atheris exited with {done.returncode}")
    return 0 if done.returncode == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total budget (default 60)")
    parser.add_argument("--target", choices=NAMES, action="append", help="default: all")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=None, help="random engine seed")
    args = parser.parse_args(argv)
    names = args.target or list(NAMES)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "random"
    seed = args.seed if args.seed is not None else int(time.time())
    share = args.seconds / len(names)
    status = 0
    for name in names:
        if engine == "atheris":
            status |= run_atheris(name, share)
        else:
            status |= run_random(name, share, seed)
    return status


if __name__ == "__main__":
    sys.exit(main())
