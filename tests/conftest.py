"""Shared fixtures: each family of test servers lives in its own module."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.servers.certs",
    "tests.servers.fakesmtp",
    "tests.servers.aiosmtpd_server",
    "tests.servers.postfix",
    "tests.servers.proxy",
    "tests.servers.mxnet",
    "tests.servers.postgres",
    "tests.drivers",
]

# Shared machines are noisy: a property test is judged on its property, never on its speed.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
# CI explores the same examples on every run, so a red build always reproduces; local runs
# keep exploring new ones (that is how a SASLprep case was found).
settings.register_profile("ci", parent=settings.get_profile("suite"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "suite")
