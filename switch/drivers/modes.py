"""Datapath mode names: the one list the command line, the ladder and `weft status` use.

Kept free of numpy and numba so the command line can import it cheaply.
"""

from __future__ import annotations

AUTO = "auto"  # the best of the ladder that works here
OFFLOAD = "offload"  # compiled loop on a TUN/TAP with IFF_VNET_HDR + TSO, UDP GSO/GRO
FAST = "fast"  # compiled loop on a plain TUN/TAP
PLAIN = "plain"  # the Python loop
LADDER = (OFFLOAD, FAST, PLAIN)  # best first
CHOICES = (AUTO, *LADDER)  # what `weft run --datapath` takes

# `weft status` datapath.io: what the running mode does per packet ("" before start)
IO = {OFFLOAD: "compiled loop on a TSO device: read + split + sendmmsg (UDP GSO), "
               "recvmmsg (UDP GRO) + coalesce + write (no GIL)",
      FAST: "compiled loop: poll/read + sendmmsg, recvmmsg + write (no GIL)",
      PLAIN: "Python loop: select/readv + sendto, recvfrom + write",
      "": "not started"}
