"""Prometheus metrics for an outbox (``pip install 'smtpsubmit[metrics]'``).

The numbers are read from the database at scrape time (``Outbox.stats()``),
so every worker exports the state of the whole outbox, not only its own
share, and nothing is lost when a worker restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtpsubmit.outbox.outbox import Outbox

__all__ = ["OutboxCollector", "serve_metrics"]


class OutboxCollector:
    """A prometheus_client collector over :meth:`Outbox.stats`."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        stats = self.outbox.stats()
        messages = GaugeMetricFamily(
            "smtpsubmit_outbox_messages", "Messages in the outbox by state", labels=["state"]
        )
        for state, count in stats["states"].items():
            messages.add_metric([state], count)
        yield messages
        routes = GaugeMetricFamily(
            "smtpsubmit_outbox_route_messages",
            "Messages in the outbox by route and state",
            labels=["route", "state"],
        )
        for route, counts in stats["routes"].items():
            for state, count in counts.items():
                routes.add_metric([route, state], count)
        yield routes
        yield GaugeMetricFamily(
            "smtpsubmit_outbox_oldest_age_seconds",
            "Age of the oldest message still waiting to be sent",
            value=stats["oldest_age"],
        )
        yield GaugeMetricFamily(
            "smtpsubmit_outbox_send_rate",
            "Messages completed per second over the last minute",
            value=stats["send_rate"],
        )
        yield GaugeMetricFamily(
            "smtpsubmit_outbox_possible_duplicates",
            "Resends after a lost reply or a worker crash (each may have duplicated a message)",
            value=stats["possible_duplicates"],
        )


def serve_metrics(outbox: Outbox, port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; returns the HTTP server
    (``.shutdown()`` stops it, ``.server_port`` is the port actually bound)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise RuntimeError(
            "metrics need prometheus-client: pip install 'smtpsubmit[metrics]'"
        ) from None
    registry = CollectorRegistry()
    registry.register(OutboxCollector(outbox))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
