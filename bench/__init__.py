"""Benchmarks for smtpsubmit against smtplib, aiosmtplib and Postfix's smtp-source.

Run everything with ``python -m bench`` (see ``bench/README.md``). One workload
for one client runs in its own process: ``python -m bench.runner CLIENT WORKLOAD``.
"""
