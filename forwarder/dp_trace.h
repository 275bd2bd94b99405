/*
 * dp_trace.h -- the packet trace's points: one line per point.
 *
 * _(SYMBOL, "stage", "format") expands into the enum (TR_SYMBOL), the
 * stage's name (what `forwarder trace show` prints in front of the line)
 * and the format of the decision it records.  A trace step carries the
 * point, five numbers (x: 16 bits, a b c d: 32 bits) and 32 bytes of data;
 * the dataplane stores them and nothing else (no formatting, no strings),
 * and forwarder/trace.py renders them with the format:
 *
 *   {a}          the number          {a:hex}      in hexadecimal
 *   {a:ip4}      an IPv4 address (host order)    {data:ip6}   16 bytes at data
 *   {data@16:mac} 6 bytes at data+16  {d:if}      an interface index, by name
 *   {a:drop}     a drop reason (dp_drop.h)       {c:nh}       a next-hop type
 *   {b:via} {data@16:via6}  "via GATEWAY", nothing for 0 / ::   {d:dev}  "dev IF", nothing for -1
 *   {x:ethertype} {x:gso} {x:arpop} {x:icmp} {x:icmp6} {a:nd6state} {a:nosend}
 *                names of those codes (nosend: why an ICMP error was not sent,
 *                TR_NOSEND_* below; nd6state also names ARP's states, which
 *                have the same values)
 *
 * VPP's nodes each format their own trace; here the formats sit in one list
 * so that "what can a trace say" is answered in one look, as dp_drop.h does
 * for drops.  Append new points anywhere (values are never stored outside a
 * running router); a point's stage name is what tests and operators read,
 * so do not rename them.
 *
 * The end of a traced packet is one of TR_END_* (the rule for several is
 * net/dp_trace.pxi's).
 */
#ifndef FORWARDER_DP_TRACE_H
#define FORWARDER_DP_TRACE_H

#define foreach_dp_trace                                                                         \
  _(TAP_INPUT,    "tap_input",    "virtio-net {x:gso} gso_size={a} csum_start={b} csum_offset={c}") \
  _(ETHER_INPUT,  "ether_input",  "{x:ethertype} {data@6:mac} > {data:mac}")                      \
  _(ARP_INPUT,    "arp_input",    "{x:arpop} sender {a:ip4} {data:mac} target {b:ip4}")          \
  _(IP_INPUT,     "ip_input",     "ok {a:ip4} > {b:ip4} hlen={x} len={c} proto={d}")             \
  _(IP_LOCAL,     "ip_local",     "for us: {a:ip4}")                                             \
  _(ICMP_INPUT,   "icmp_input",   "echo request id={x} seq={a}: echo reply")                     \
  _(IP_LOOKUP,    "ip_lookup",    "{a:ip4}/{x} {c:nh} {b:via} {d:dev}")                          \
  _(IP_MULTIPATH, "ip_multipath", "flow hash {a:hex}: via {b:ip4} dev {d:if}")                   \
  _(IP_TTL,       "ip_ttl",       "{a} -> {b}")                                                  \
  _(IP_OUTPUT,    "ip_output",    "own packet {a:ip4} > {b:ip4}: {c:nh} dev {d:if}")            \
  _(IP_FRAGMENT,  "ip_fragment",  "{a} bytes > mtu {b} of {d:if}: {c} fragments")                \
  _(GSO_SEGMENT,  "gso_segment",  "super-frame of {a} bytes: {b} segments for {d:if}")           \
  _(ARP_HIT,      "arp",          "hit {a:ip4} is-at {data:mac} ({b:nd6state})")                 \
  _(ARP_MISS,     "arp",          "miss {a:ip4} on {d:if}: held ({b} waiting)")                  \
  _(ARP_RESOLVED, "arp",          "resolved {a:ip4} is-at {data:mac}: held packet sent")         \
  _(ARP_LEARN,    "arp",          "learned {b:ip4} is-at {data:mac}: {a:nd6state}")              \
  _(ARP_UPDATE,   "arp",          "{b:ip4} is-at {data:mac}, was {data@6:mac}: {a:nd6state}")    \
  _(ARP_RATELIMITED, "arp",       "request for {a:ip4} on {d:if} not sent: rate limit")          \
  _(IP6_INPUT,    "ip6_input",    "ok > {data:ip6} len={a} nxt={b} hlim={c}")                    \
  _(IP6_LOCAL,    "ip6_local",    "for us: {data:ip6} nxt={a}")                                  \
  _(ICMP6_INPUT,  "icmp6_input",  "echo request id={a} seq={b}: echo reply")                     \
  _(ND6_INPUT,    "nd6_input",    "{x:icmp6} target {data:ip6}")                                 \
  _(IP6_LOOKUP,   "ip6_lookup",   "{data:ip6}/{x} {c:nh} {data@16:via6} {d:dev}")               \
  _(IP6_MULTIPATH, "ip6_multipath", "flow hash {a:hex}: via {data:ip6} dev {d:if}")              \
  _(IP6_HLIM,     "ip6_hlim",     "{a} -> {b}")                                                  \
  _(IP6_OUTPUT,   "ip6_output",   "own packet > {data:ip6} dev {d:if}")                          \
  _(ND6_HIT,      "nd6",          "hit {data:ip6} is-at {data@16:mac} ({a:nd6state})")           \
  _(ND6_MISS,     "nd6",          "miss {data:ip6} on {d:if}: held ({b} waiting)")               \
  _(ND6_RESOLVED, "nd6",          "resolved {data:ip6} is-at {data@16:mac}: held packet sent")   \
  _(ND6_RATELIMITED, "nd6",       "solicitation for {data:ip6} on {d:if} not sent: rate limit")  \
  _(ICMP_ERROR,   "icmp_error",   "{x:icmp} code {c} to {a:ip4}")                                \
  _(ICMP6_ERROR,  "icmp6_error",  "{x:icmp6} code {c} to {data:ip6}")                            \
  _(ICMP_SUPPRESSED, "icmp_error", "{x:icmp} not sent: {a:nosend}")                             \
  _(ICMP6_SUPPRESSED, "icmp6_error", "{x:icmp6} not sent: {a:nosend}")                          \
  _(PUNT,         "punt",         "to the control plane via {d:if}")                             \
  _(ETHER_OUTPUT, "ether_output", "{d:if} {data@6:mac} > {data:mac} {x:ethertype}")              \
  _(TX,           "tx",           "{d:if} {a} bytes")                                            \
  _(DROP,         "drop",         "{a:drop}")

typedef enum {
#define _(sym, stage, fmt) TR_##sym,
  foreach_dp_trace
#undef _
  TR_MAX
} dp_trace_point_t;

static const char *const dp_trace_stage[TR_MAX] = {
#define _(sym, stage, fmt) stage,
  foreach_dp_trace
#undef _
};

static const char *const dp_trace_format[TR_MAX] = {
#define _(sym, stage, fmt) fmt,
  foreach_dp_trace
#undef _
};

/* How a traced packet ended. */
#define foreach_dp_trace_end                                                                     \
  _(NONE,         "in flight",     "no end yet: held for a neighbour, or the trace was read meanwhile") \
  _(TRANSMITTED,  "transmitted",   "written to the egress TAP")                                  \
  _(DELIVERED,    "delivered",     "for the router: answered (echo), or ARP/ND handled")          \
  _(PUNTED,       "punted",        "handed to the control plane (the port's mirror)")            \
  _(ICMP_ERROR,   "icmp error",    "dropped and answered with an ICMP/ICMPv6 error")             \
  _(DROPPED,      "dropped",       "dropped; the reason is the last drop step")

typedef enum {
#define _(sym, name, desc) TR_END_##sym,
  foreach_dp_trace_end
#undef _
  TR_END_MAX
} dp_trace_end_t;

static const char *const dp_trace_end_name[TR_END_MAX] = {
#define _(sym, name, desc) name,
  foreach_dp_trace_end
#undef _
};

/* Why an ICMP error was not sent (RFC 1812 4.3.2.7, RFC 4443 2.4). */
enum {
  TR_NOSEND_FRAGMENT = 1,       /* about a non-initial fragment */
  TR_NOSEND_ERROR = 2,          /* about an ICMP error */
  TR_NOSEND_GROUP = 3,          /* to a broadcast, multicast or martian source */
  TR_NOSEND_RATELIMIT = 4,      /* icmplim / icmp6 errppslimit */
  TR_NOSEND_NOBUFS = 5,         /* no mbuf for it */
};

#endif
