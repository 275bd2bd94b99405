"""Prometheus endpoint ([metrics] listen = "host:port"): interface counters,
drop reasons, ICMP counters and UMA zone gauges, read at scrape time."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from forwarder.router import Router

log = logging.getLogger("forwarder.metrics")


class RouterCollector(Collector):
    def __init__(self, router: "Router") -> None:
        self.router = router

    def collect(self) -> Iterator:
        from forwarder import mbufs
        s = self.router.dp.stats()
        name = self.router.config.router.name
        for key, doc in (("rx_packets", "frames read"), ("rx_bytes", "bytes read"),
                         ("rx_nobuf", "frames dropped for want of a buffer"),
                         ("rx_errors", "read errors"), ("tx_packets", "frames written"),
                         ("tx_bytes", "bytes written"), ("tx_errors", "write errors")):
            c = CounterMetricFamily(f"forwarder_interface_{key}", doc, labels=["router", "interface"])
            for i in s["interfaces"]:
                c.add_metric([name, i["name"]], i[key])
            yield c
        d = CounterMetricFamily("forwarder_drops", "packets dropped, by reason", labels=["router", "reason"])
        for reason, v in s["drops"].items():
            d.add_metric([name, reason], v)
        yield d
        ic = CounterMetricFamily("forwarder_icmp", "ICMP messages sent or suppressed", labels=["router", "kind"])
        for k, v in s["icmp"].items():
            ic.add_metric([name, k], v)
        yield ic
        f = CounterMetricFamily("forwarder_forwarded_packets", "packets forwarded", labels=["router"])
        f.add_metric([name], s["forwarded"])
        yield f
        zones = mbufs.zone_stats()
        for key, doc in (("used", "items in use"), ("free", "items cached"),
                         ("limit", "item limit (0 = unlimited)")):
            g = GaugeMetricFamily(f"forwarder_zone_{key}", doc, labels=["router", "zone"])
            for z in zones:
                g.add_metric([name, z["name"]], z[key])
            yield g
        for key, doc in (("fails", "allocations denied"), ("sleeps", "allocations delayed"),
                         ("requests", "allocations")):
            c = CounterMetricFamily(f"forwarder_zone_{key}", doc, labels=["router", "zone"])
            for z in zones:
                c.add_metric([name, z["name"]], z[key])
            yield c


def start_metrics(router: "Router", host: str, port: int):
    """Serve /metrics in a thread; returns the server (call .shutdown())."""
    from prometheus_client import start_http_server
    registry = CollectorRegistry()
    registry.register(RouterCollector(router))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
