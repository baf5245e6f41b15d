"""DKIM signing cost: one big message and many small ones, signed and unsigned, to smtp-sink.

    .venv/bin/python -m bench.dkim [--mb 1024] [--small 2000]

Each case runs in a fresh interpreter so its peak RSS (VmHWM) is its own. The big
message is a composed message with one random attachment of ``--mb`` MiB read from
disk (as W3); the small ones are 2 KB messages on one connection (as W1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import write_random_file
from bench.servers import Sink

CHILD = r"""
import json, sys, time
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from smtpsubmit import Client, DkimSigner, Message, Option, Server

port, attachment, small, algorithm = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
signer = None
if algorithm != "none":
    key = (ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519"
           else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    signer = DkimSigner("example.org", "bench", pem)
server = Server("127.0.0.1", port=port, options=Option.EXTENDED, timeout=600, dkim=signer)
out = {}
with Client(server) as client:
    if attachment != "-":
        msg = Message(sender="a@example.org", to="b@example.org", text="big",
                      attachments=attachment)
        start = time.perf_counter()
        result = client.send(msg)
        out["big_s"] = time.perf_counter() - start
        out["big_octets"] = result.size
    if small:
        body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 34)[:2000]
        msgs = [Message(sender="a@example.org", to="b@example.org", subject=f"m{i}", text=body)
                for i in range(small)]
        start = time.perf_counter()
        for msg in msgs:
            client.send(msg)
        out["small_s"] = time.perf_counter() - start
with open("/proc/self/status") as status:
    out["peak_kib"] = int(next(l for l in status if l.startswith("VmHWM:")).split()[1])
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--small", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dkim-") as tmp:
        work = Path(tmp)
        attachment = work / "big.bin"
        write_random_file(attachment, args.mb * 1024 * 1024)
        sink = Sink(work)
        try:
            print("| signing | big: MB/s on the wire | big: peak RSS | small: msg/s |")
            print("|---|---:|---:|---:|")
            for algorithm in ("none", "rsa", "ed25519"):
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, str(sink.port), str(attachment),
                     str(args.small), algorithm],
                    capture_output=True, check=True, timeout=3600,
                )  # fmt: skip
                r = json.loads(done.stdout)
                print(
                    f"| {algorithm} | {r['big_octets'] / r['big_s'] / 1e6:.0f} "
                    f"| {r['peak_kib'] / 1024:.1f} MiB | {args.small / r['small_s']:.0f} |"
                )
        finally:
            sink.stop()


if __name__ == "__main__":
    main()
