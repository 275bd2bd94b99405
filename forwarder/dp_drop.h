/*
 * dp_drop.h -- why the dataplane drops a packet: one line per reason.
 *
 * _(SYMBOL, "description") expands into the enum (DROP_SYMBOL), the public
 * name (the symbol lowercased: the counter of `forwarder stats`, the `reason`
 * label of forwarder_drops_total) and the description (`forwarder stats -v`,
 * the metric's HELP text), as VPP's foreach_ip4_error does.  Append new
 * reasons anywhere: nothing outside this file depends on the values, and the
 * names are what operators' dashboards key on, so do not rename them.
 *
 * dataplane.pxd declares the symbols to Cython (declarations only: the C
 * compiler checks each against this list).
 */
#ifndef FORWARDER_DP_DROP_H
#define FORWARDER_DP_DROP_H

#define foreach_dp_drop                                                                          \
  _(RUNT,                     "frame shorter than an Ethernet header")                           \
  _(NOT_OUR_MAC,              "unicast frame for another station's MAC address")                 \
  _(ETHERTYPE,                "frame neither IPv4, IPv6 nor ARP")                                \
  _(ARP_MALFORMED,            "ARP not Ethernet/IPv4, or shorter than 28 bytes")                 \
  _(ARP_NOT_ON_LINK,          "ARP for us from a sender outside the prefixes of its link")       \
  _(VNET_HDR_INVALID,         "virtio-net header at odds with the frame (GSO type, checksum offsets)") \
  _(IP_TOO_SHORT,             "shorter than an IPv4 header")                                     \
  _(IP_BAD_VERSION,           "IP version not 4")                                                \
  _(IP_BAD_HEADER_LENGTH,     "IPv4 header length below 20 bytes or beyond the frame")           \
  _(IP_BAD_CHECKSUM,          "IPv4 header checksum wrong")                                      \
  _(IP_BAD_TOTAL_LENGTH,      "IPv4 total length below the header or beyond the frame")          \
  _(MARTIAN_SOURCE,           "source 0/8, 127/8, multicast or class E (RFC 1812 5.3.7)")        \
  _(MARTIAN_DESTINATION,      "destination 0/8, 127/8 or class E (RFC 1812 5.3.7)")              \
  _(LINK_BROADCAST,           "link-layer broadcast or multicast, not forwarded (RFC 1812 5.3.4)") \
  _(IP_BROADCAST_DESTINATION, "multicast or directed-broadcast destination, not forwarded")      \
  _(FORWARDING_DISABLED,      "to forward, with net.inet.ip.forwarding (or ip6.forwarding) = 0") \
  _(NO_ROUTE,                 "no route to the destination (ICMP net unreachable)")              \
  _(BLACKHOLE,                "blackhole route: dropped without an answer")                      \
  _(UNREACHABLE_ROUTE,        "unreachable route (ICMP host unreachable)")                       \
  _(PROHIBITED_ROUTE,         "prohibit route (ICMP administratively prohibited)")               \
  _(TTL_EXCEEDED,             "TTL or hop limit would reach 0 (ICMP time exceeded)")             \
  _(NEEDFRAG_DF_SET,          "larger than the next link's MTU with DF set (ICMP frag needed)")  \
  _(NO_BUFFER,                "no mbuf or cluster: a zone limit or out of memory")               \
  _(INTERFACE_DOWN,           "out of a port whose attached interface is gone (forwarder/attach.py)") \
  _(ARP_TIMEOUT,              "the next hop never answered ARP (ICMP host unreachable)")         \
  _(ARP_HOLD_OVERFLOW,        "more held for an unresolved neighbour than maxhold (oldest)")     \
  _(ARP_HOLD_RECLAIMED,       "held for an unresolved neighbour, freed when buffers ran out")    \
  _(ARP_TABLE_FULL,           "no room in the ARP table for a new neighbour")                    \
  _(ARP_INTERFACE_FULL,       "the interface has its maximum of ARP entries")                    \
  _(ARP_INCOMPLETE_FULL,      "the interface has its maximum of unresolved neighbours (ARP or ND)") \
  _(IP6_TOO_SHORT,            "shorter than an IPv6 header")                                     \
  _(IP6_BAD_VERSION,          "IP version not 6 under the IPv6 EtherType")                       \
  _(IP6_BAD_LENGTH,           "IPv6 payload length beyond the frame, or 0 (jumbogram)")          \
  _(IP6_MARTIAN_SOURCE,       "IPv6 source multicast, loopback or IPv4-mapped (RFC 4291)")       \
  _(IP6_MARTIAN_DESTINATION,  "IPv6 destination unspecified, loopback or IPv4-mapped")           \
  _(IP6_BEYOND_SCOPE,         "a link-local source or destination would leave its link")         \
  _(IP6_TOO_BIG,              "larger than the next link's MTU (ICMPv6 packet too big)")         \
  _(ND_MALFORMED,             "Neighbor Discovery with hop limit not 255, code not 0, bad options") \
  _(ND_NOT_ON_LINK,           "Neighbor Discovery from or for an address not on the link")       \
  _(ND6_HOLD_OVERFLOW,        "more held for an unresolved IPv6 neighbour than maxhold (oldest)") \
  _(ND6_TIMEOUT,              "the IPv6 next hop never answered Neighbor Solicitations")         \
  _(LOCAL_NOT_ECHO,           "to the router and not an ICMP echo request")                      \
  _(ICMP_MALFORMED,           "echo request with a bad ICMP checksum")                           \
  _(TX_ERROR,                 "writing the frame to the TAP failed")                             \
  _(OUTPUT_NO_ROUTE,          "a packet of the router's own with no route")

typedef enum {
#define _(sym, desc) DROP_##sym,
  foreach_dp_drop
#undef _
  DROP_MAX
} dp_drop_t;

static const char *const dp_drop_symbol[DROP_MAX] = {
#define _(sym, desc) #sym,
  foreach_dp_drop
#undef _
};

static const char *const dp_drop_description[DROP_MAX] = {
#define _(sym, desc) desc,
  foreach_dp_drop
#undef _
};

#endif
