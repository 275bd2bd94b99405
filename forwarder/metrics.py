"""Prometheus endpoint ([metrics] listen = "host:port"): interface counters,
drop reasons, ICMP counters, UMA zone gauges, reloads and dataplane health,
all read at scrape time.

    forwarder_interface_{rx,tx}_{packets,bytes}_total{router,interface}
    forwarder_interface_{rx_nobuf,rx_errors,tx_errors}_total{router,interface}
    forwarder_interface_{rx,tx}_gso{,_segments}_total{router,interface}   super-frames, their segments
    forwarder_interface_{gso,csum}_software_total{router,interface}       offload work done here
    forwarder_interface_up{router,interface}    1 while its link is up (an attached port: joined)
    forwarder_attach_{joins,losses}_total{router,interface}   an attached port's interface came, went
    forwarder_drops_total{router,reason}        one series per drop reason (HELP says what each means)
    forwarder_icmp_total{router,kind}           unreachable, time_exceeded, echo_replies, ratelimited
    forwarder_forwarded_packets_total, forwarder_delivered_local_total,
    forwarder_fragments_created_total{router}
    forwarder_zone_{used,free,limit}{router,zone}      gauges (limit 0 = unlimited)
    forwarder_zone_{failures,sleeps,requests}_total{router,zone}
    forwarder_icmp6_total{router,kind}          echo_replies, unreachable, packet_too_big, time_exceeded,
                                                parameter_problem, ratelimited
    forwarder_nd6_total{router,kind}            received, solicitations_sent, advertisements_sent,
                                                solicitations_ratelimited
    forwarder_nd6_probes_total{router}          the unicast solicitations among solicitations_sent
    forwarder_arp_total{router,kind}            received, requests_sent, replies_sent,
                                                requests_ratelimited
    forwarder_arp_probes_total{router}          the unicast requests among requests_sent
    forwarder_arp_entries{router}, forwarder_nd6_entries{router}
    forwarder_reloads_total{router,result}      ok | failed
    forwarder_sysctl{router,name}               every tunable's current value
    forwarder_dataplane_up{router}              1 when healthy (progress in the last 2 s, and
                                                the attached interfaces came or attach_timeout passed)
    forwarder_dataplane_progress_age_seconds{router}
    forwarder_{control,metrics}_rejected_total{router,reason}   requests the control socket /
                                                this endpoint rejected, by reason (every reason)
    forwarder_{control,metrics}_refused_connections_total{router}   turned away at max_clients
    forwarder_{control,metrics}_clients{router} connections being served now

The dataplane's counters are read under its lock.  A scrape waits at most
STATS_WAIT seconds for it: while the forwarding loop is stuck (or stalled
with `forwarder debug stall`) the scrape still answers, promptly, with
forwarder_dataplane_up 0 and the counters of the last read that succeeded.

The HTTP server is forwarder/metrics_http.py: /metrics only, within the
limits of net.forwarder.metrics.* (forwarder/admission.py).
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from forwarder.admission import EndpointStats
from forwarder.dataplane import DROP_REASONS
from forwarder.metrics_http import METRICS_PATH, MetricsServer
from forwarder.metrics_http import REJECTIONS as METRICS_REJECTIONS
from forwarder.metrics_http import TUNABLES as METRICS_TUNABLES

if TYPE_CHECKING:
    from forwarder.router import Router

log = logging.getLogger("forwarder.metrics")

# One HELP line for the family, naming what each `reason` label value means
# (the descriptions of dp_drop.h).
DROPS_HELP = "packets dropped, by reason: " + "; ".join(
    f"{name}: {desc}" for name, desc in DROP_REASONS.items())

INTERFACE_COUNTERS = (
    ("rx_packets", "frames read"), ("rx_bytes", "bytes read"),
    ("rx_nobuf", "frames dropped for want of a buffer"), ("rx_errors", "read errors"),
    ("tx_packets", "frames written"), ("tx_bytes", "bytes written"),
    ("tx_errors", "write errors"),
    ("rx_gso", "super-frames (TSO/USO) read"),
    ("rx_gso_segments", "segments the super-frames read carried"),
    ("tx_gso", "super-frames written, segmentation left to the kernel"),
    ("tx_gso_segments", "segments the super-frames written carried"),
    ("gso_software", "super-frames cut into segments here: no TSO on the egress, or too big with DF clear"),
    ("csum_software", "checksums completed here that the sender had left to offload"),
)


# Seconds a scrape waits for the dataplane's lock before using the last counters.
STATS_WAIT = 1.0


class _Read:
    """One read of the dataplane's counters, in a thread of its own."""

    def __init__(self, fn: Callable[[], dict]) -> None:
        self.done = threading.Event()
        self.result: dict | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(fn,), name="metrics-stats", daemon=True).start()

    def _run(self, fn: Callable[[], dict]) -> None:
        try:
            self.result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the scrape
            self.error = e
        finally:
            self.done.set()


class RouterCollector(Collector):
    def __init__(self, router: "Router") -> None:
        self.router = router
        self._lock = threading.Lock()
        self._read: _Read | None = None
        self._last: dict | None = None

    def dataplane_stats(self) -> dict | None:
        """The dataplane's counters, waiting at most STATS_WAIT for its lock;
        else the last ones read (None before the first).  At most one read is
        outstanding, however many scrapes come while the loop is stuck."""
        with self._lock:
            if self._read is None or self._read.done.is_set():
                self._read = _Read(self.router.dp.stats)
            read = self._read
        if not read.done.wait(STATS_WAIT):
            log.debug("metrics: dataplane counters not readable within %g s", STATS_WAIT)
            return self._last
        if read.error is not None:
            raise read.error
        self._last = read.result
        return read.result

    def collect(self) -> Iterator:
        r = self.router
        name = r.config.router.name
        # Health first: it must not wait for the dataplane's lock.
        age = r.dp.progress_age()
        up = GaugeMetricFamily("forwarder_dataplane_up",
                               "1 when the forwarding loop made progress in the last 2 s and the "
                               "attached interfaces are there (or attach_timeout passed)",
                               labels=["router"])
        up.add_metric([name], 1 if r.healthy() else 0)
        yield up
        g = GaugeMetricFamily("forwarder_dataplane_progress_age_seconds",
                              "seconds since the forwarding loop last went round",
                              labels=["router"])
        g.add_metric([name], age)
        yield g

        s: Any = self.dataplane_stats()
        if s is None:
            yield from self._zones_and_config(name)
            return
        for key, doc in INTERFACE_COUNTERS:
            c = CounterMetricFamily(f"forwarder_interface_{key}", doc,
                                    labels=["router", "interface"])
            for i in s["interfaces"]:
                c.add_metric([name, i["name"]], i[key])
            yield c
        link = GaugeMetricFamily("forwarder_interface_up", "1 while the interface's link is up "
                                 "(an attached port: while its interface is joined)",
                                 labels=["router", "interface"])
        for i in s["interfaces"]:
            link.add_metric([name, i["name"]], 1 if i["link"] == "up" else 0)
        yield link
        ports = r.attached_ports()
        for key, doc in (("joins", "times an attached port's interface was joined"),
                         ("losses", "times an attached port's interface went away")):
            c = CounterMetricFamily(f"forwarder_attach_{key}", doc, labels=["router", "interface"])
            for p in ports.values():
                c.add_metric([name, p.name], getattr(p, key))
            yield c
        d = CounterMetricFamily("forwarder_drops", DROPS_HELP, labels=["router", "reason"])
        for reason, v in s["drops"].items():
            d.add_metric([name, reason], v)
        yield d
        ic = CounterMetricFamily("forwarder_icmp", "ICMP messages sent or suppressed, by kind",
                                 labels=["router", "kind"])
        for k, v in s["icmp"].items():
            if k == "errors_sent":          # the sum of its parts: summing kinds would count it twice
                continue
            ic.add_metric([name, k], v)
        yield ic
        for key, metric, doc in (("forwarded", "forwarded_packets", "packets forwarded"),
                                 ("delivered_local", "delivered_local",
                                  "packets for the router itself"),
                                 ("fragments_created", "fragments_created",
                                  "fragments made of packets too big for the next link")):
            f = CounterMetricFamily(f"forwarder_{metric}", doc, labels=["router"])
            f.add_metric([name], s[key])
            yield f
        i6 = CounterMetricFamily("forwarder_icmp6", "ICMPv6 messages sent or suppressed, by kind",
                                 labels=["router", "kind"])
        for k, v in s["icmp6"].items():
            i6.add_metric([name, k], v)
        yield i6
        nd = CounterMetricFamily("forwarder_nd6", "Neighbor Discovery messages, by kind",
                                 labels=["router", "kind"])
        for k in ("received", "solicitations_sent", "advertisements_sent",
                  "solicitations_ratelimited"):
            nd.add_metric([name, k], s["nd6"][k])
        yield nd
        probes = CounterMetricFamily(
            "forwarder_nd6_probes", "Unicast Neighbor Solicitations to neighbours in PROBE "
            "(counted in forwarder_nd6_total's solicitations_sent too)", labels=["router"])
        probes.add_metric([name], s["nd6"]["probes_sent"])
        yield probes
        ar = CounterMetricFamily("forwarder_arp", "ARP messages, by kind (requests_ratelimited: "
                                 "broadcast requests request_ppslimit kept from being sent)",
                                 labels=["router", "kind"])
        for k in ("received", "requests_sent", "replies_sent", "requests_ratelimited"):
            ar.add_metric([name, k], s["arp"][k])
        yield ar
        ap = CounterMetricFamily(
            "forwarder_arp_probes", "Unicast ARP requests to neighbours in PROBE "
            "(counted in forwarder_arp_total's requests_sent too)", labels=["router"])
        ap.add_metric([name], s["arp"]["probes_sent"])
        yield ap
        a = GaugeMetricFamily("forwarder_arp_entries", "ARP table entries", labels=["router"])
        a.add_metric([name], s["arp"]["entries"])
        yield a
        n6 = GaugeMetricFamily("forwarder_nd6_entries", "IPv6 neighbour cache entries",
                               labels=["router"])
        n6.add_metric([name], s["nd6"]["entries"])
        yield n6
        yield from self._zones_and_config(name)

    def _zones_and_config(self, name: str) -> Iterator:
        """What does not need the dataplane's lock: zones, reloads, tunables."""
        from forwarder import mbufs
        r = self.router
        zones = mbufs.zone_stats()
        for key, doc in (("used", "items in use"), ("free", "items cached"),
                         ("limit", "item limit (0 = unlimited)")):
            g = GaugeMetricFamily(f"forwarder_zone_{key}", doc, labels=["router", "zone"])
            for z in zones:
                g.add_metric([name, z["name"]], z[key])
            yield g
        for key, metric, doc in (("fails", "failures", "allocations denied at the limit"),
                                 ("sleeps", "sleeps", "allocations delayed at the limit"),
                                 ("requests", "requests", "allocations")):
            c = CounterMetricFamily(f"forwarder_zone_{metric}", doc, labels=["router", "zone"])
            for z in zones:
                c.add_metric([name, z["name"]], z[key])
            yield c

        rl = CounterMetricFamily("forwarder_reloads", "config reloads, by result",
                                 labels=["router", "result"])
        rl.add_metric([name, "ok"], r.reloads.ok)
        rl.add_metric([name, "failed"], r.reloads.failed)
        yield rl
        sc = GaugeMetricFamily("forwarder_sysctl", "current value of each tunable",
                               labels=["router", "name"])
        for n, v in r.sysctl.all():
            sc.add_metric([name, n], v)
        yield sc
        yield from self._endpoints(name)

    def _endpoints(self, name: str) -> Iterator:
        """What the control socket and this endpoint rejected and refused."""
        what = {"control": "the control socket", "metrics": "this endpoint"}
        for ep_name, ep in self.router.endpoints.items():
            d = ep.as_dict()
            server = what.get(ep_name, ep_name)
            rej = CounterMetricFamily(
                f"forwarder_{ep_name}_rejected",
                f"requests {server} rejected, by reason (every reason, 0 or not)",
                labels=["router", "reason"])
            for reason, v in d["rejected"].items():
                rej.add_metric([name, reason], v)
            yield rej
            ref = CounterMetricFamily(
                f"forwarder_{ep_name}_refused_connections",
                f"connections {server} turned away at {ep.tunable_prefix}.max_clients",
                labels=["router"])
            ref.add_metric([name], d["refused"])
            yield ref
            cl = GaugeMetricFamily(f"forwarder_{ep_name}_clients",
                                   f"connections {server} is serving", labels=["router"])
            cl.add_metric([name], d["clients"])
            yield cl


def start_metrics(router: "Router", host: str, port: int) -> MetricsServer:
    """Serve /metrics in a thread; returns the server (call .shutdown())."""
    registry = CollectorRegistry()
    registry.register(RouterCollector(router))
    endpoint = EndpointStats("metrics endpoint", METRICS_TUNABLES, METRICS_REJECTIONS)
    server = MetricsServer(host, port, registry, router.sysctl, endpoint)
    router.endpoints["metrics"] = endpoint
    server.start()
    log.info("metrics on http://%s:%d%s", host, port, METRICS_PATH)
    return server
