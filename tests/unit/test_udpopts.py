"""The UDP offload probe and switch, checked against what the kernel then really does.

Each test sends real datagrams over loopback: a probe that says UDP_SEGMENT works must mean a
send is cut into segments, and UDP_GRO switched on must mean one receive returns the segments
merged with their size in a control message. No root needed.
"""

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from weft.dev.udpopts import SOL_UDP, UDP_GRO, UDP_SEGMENT, enable_udp_gro, probe_udp_offloads

SEGMENT = 100
PAYLOAD = bytes(range(250))  # two full segments and a short one


@contextmanager
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(sender, receiver): UDP sockets on 127.0.0.1; the receiver gives up after 5 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        tx.bind(("127.0.0.1", 0))
        yield tx, rx


def received_sizes(rx: socket.socket, total: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(len(rx.recv(65536)))
    return sizes


def test_probe_reports_both_options():
    found = probe_udp_offloads()
    assert set(found) == {"udp_segment", "udp_gro"}
    assert all(isinstance(v, bool) for v in found.values())


def test_the_segment_probe_matches_a_real_gso_send():
    """UDP_SEGMENT as a control message (the way the compiled loop sends): segments when the
    probe says the kernel takes the option; an older kernel refuses or ignores it."""
    with loopback_pair() as (tx, rx):
        try:
            tx.sendmsg([PAYLOAD], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", SEGMENT))], 0,
                       rx.getsockname())
        except OSError:
            sizes = None
        else:
            sizes = received_sizes(rx, len(PAYLOAD))
    if probe_udp_offloads()["udp_segment"]:
        assert sizes == [SEGMENT, SEGMENT, len(PAYLOAD) - 2 * SEGMENT]
    else:
        assert sizes in (None, [len(PAYLOAD)])


def test_enable_udp_gro_makes_one_receive_return_the_merged_segments():
    with loopback_pair() as (tx, rx):
        on = enable_udp_gro(rx.fileno())
        assert on == probe_udp_offloads()["udp_gro"]
        if not on:  # a kernel without UDP_GRO (before Linux 5.0) does not know the option
            with pytest.raises(OSError):
                rx.getsockopt(SOL_UDP, UDP_GRO)
            return
        assert rx.getsockopt(SOL_UDP, UDP_GRO) == 1  # set on the caller's socket, still open
        tx.setsockopt(SOL_UDP, UDP_SEGMENT, SEGMENT)
        tx.sendto(PAYLOAD, rx.getsockname())
        data, ancillary, _flags, sender = rx.recvmsg(65536, socket.CMSG_SPACE(4))
        assert sender == tx.getsockname()
    # Three segments in one receive (without UDP_GRO they arrive one by one: the test above).
    assert data == PAYLOAD
    assert ancillary == [(SOL_UDP, UDP_GRO, struct.pack("=i", SEGMENT))]


def test_enable_udp_gro_on_a_non_udp_socket_is_false():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert enable_udp_gro(sock.fileno()) is False
