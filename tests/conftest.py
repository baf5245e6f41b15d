"""Shared fixtures: each family of test servers lives in its own module."""

pytest_plugins = [
    "tests.servers.certs",
    "tests.servers.fakesmtp",
    "tests.servers.aiosmtpd_server",
    "tests.servers.postfix",
    "tests.servers.proxy",
    "tests.drivers",
]
