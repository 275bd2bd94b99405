"""forwarder: a userspace IPv4 router between Linux TAP devices, on mbufs."""
