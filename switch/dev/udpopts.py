"""UDP socket offload options the compiled loop uses: UDP_SEGMENT (GSO) and UDP_GRO."""

from __future__ import annotations

import socket

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104


def enable_udp_gro(fd: int) -> bool:
    """Turn UDP_GRO on for a UDP socket (by descriptor); False if the kernel refuses."""
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False
    finally:
        sock.detach()  # the descriptor stays owned by its Transport


def probe_udp_offloads() -> dict[str, bool]:
    """Whether this kernel takes UDP_SEGMENT and UDP_GRO on a UDP socket (both from Linux 5.0).

    Only the socket options are probed; a GSO send can still be refused per route (EIO), which
    the loop notices at its first send and then stops using GSO.
    """
    result = {"udp_segment": False, "udp_gro": False}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for key, opt, value in (("udp_segment", UDP_SEGMENT, 1400), ("udp_gro", UDP_GRO, 1)):
            try:
                sock.setsockopt(SOL_UDP, opt, value)
                result[key] = True
            except OSError:
                pass
    return result
