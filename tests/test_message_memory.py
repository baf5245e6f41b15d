"""Streaming really streams: a 200 MB attachment goes out in bounded memory.

Measured in a fresh interpreter (peak RSS, ``VmHWM``) so the test process's
own allocations cannot hide or fake the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import smtpsubmit

ATTACHMENT_SIZE = 200 * 1024 * 1024
PEAK_LIMIT_KB = 64 * 1024

CHILD = """
import sys
from smtpsubmit.message import Message

message = Message(sender="a@example.org", to="b@example.org", text="big", attachments=sys.argv[1])
prepared = message.prepare(allow_8bit=True, smtputf8=False)
total = 0
for chunk in prepared.iter_bytes():
    total += len(chunk)
assert total == prepared.size, (total, prepared.size)
with open("/proc/self/status") as status:
    peak = next(line for line in status if line.startswith("VmHWM:"))
print(total, int(peak.split()[1]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_big_attachment_streams_in_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(ATTACHMENT_SIZE)  # sparse: instant, no disk space
    src = str(Path(smtpsubmit.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(big)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    total, peak_kb = map(int, result.stdout.split())
    assert total > ATTACHMENT_SIZE * 4 // 3  # base64 with line ends
    assert peak_kb < PEAK_LIMIT_KB, f"peak RSS {peak_kb} kB"
