"""Shared fixtures: each family of test servers lives in its own module."""

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.servers.certs",
    "tests.servers.fakesmtp",
    "tests.servers.aiosmtpd_server",
    "tests.servers.postfix",
    "tests.servers.proxy",
    "tests.drivers",
]

# Shared machines are noisy: a property test is judged on its property, never on its speed.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("suite")
