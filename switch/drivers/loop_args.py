"""The compiled loops' arguments besides the pipeline's: parameters and per-direction IO scratch.

Each loop takes five groups (compiled_loops.egress_loop / ingress_loop): LoopParams, its
direction's IO scratch (EgressIO or IngressIO), and the pipeline's BatchArrays, PeerArrays and
PipelineState (weft.packet.pipeline_steps). NamedTuples, because numba types them by class: two
groups swapped do not compile, and every array inside is used by its field name. They also cache:
numba keys its on-disk cache by the argument types, and a NamedTuple type pickles as a reference
to its class (tests/unit/test_compiled_loop.py restarts an interpreter and checks the loops load,
not compile).

The scratch is allocated once per direction and owned by that direction's thread: the structs
of the system calls (pollfd, mmsghdr, iovec, sockaddr_in, cmsg) as integer arrays laid out as
weft.drivers.libc names them, plus the offload buffers. Arrays a mode does not use are
1-element placeholders, so every mode runs the same compiled loop.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from weft.drivers.libc import IOVEC, MMSG, POLLFD, SOCKADDR_IN_SIZE
from weft.drivers.loop_syscalls import CTL_SIZE, ST_SIZE
from weft.drivers.udpgso import GRO_CMSG, GRO_MESSAGES, GSO_CMSG
from weft.packet.batch import BUFSIZE
from weft.packet.counters import ENCAP_PATHS
from weft.packet.encap import Encap
from weft.packet.headers import IPV4_UDP_HLEN
from weft.packet.offload.gro_coalesce import new_unit_scratch, new_units
from weft.packet.offload.tunnel import INFO_SIZE, new_sup, super_head
from weft.packet.offload.udp_gro import GRO_BUF, GRO_PAD, receive_view


class LoopParams(NamedTuple):
    """The scalars of one loop (all int64 to numba)."""

    code: int  # the encapsulation's row code (weft.packet.encap.Encap.code): its kernels
    dev_fd: int  # the TUN/TAP (or anything that reads and writes one packet per call)
    sock_fd: int  # egress: the socket that sends; ingress: the socket bound to the port
    port: int  # the UDP port peers listen on
    timeout_ms: int  # how long poll() sleeps before the loop looks at its stop flag
    l3_off: int  # offload device: where IPv4 starts after the virtio_net_hdr (14 TAP, 0 TUN);
    #              -1: a plain device, no header
    gro_n: int  # ingress with UDP_GRO on: messages per recvmmsg; 0 without GRO
    # The rest is read off the encapsulation's row once (loop_params), so the loops take
    # numbers, not a backend name:
    send_port: int  # the port sendmmsg addresses: 0 when the step wrote the outer UDP itself
    outer_len: int  # outer IPv4 + UDP bytes the egress step wrote in front of the payload
    sup_head: int  # offload egress: where a device read lands in io.sup (tunnel.super_head)
    rx_view: int  # where the encapsulation sees an io.gro row from (udp_gro.receive_view)
    egress_path: int  # its counters rows (weft.packet.counters.ENCAP_PATHS)
    ingress_path: int
    tnl_fd: int = -1  # egress: the TX TAP that takes UDP-tunnel GSO frames (vxlan); -1: none
    tnl_mac: int = 0  # its MAC as a 48-bit integer (the outer Ethernet destination)


def loop_params(encap: Encap, *, dev_fd: int, sock_fd: int, port: int, timeout_ms: int,
                l3_off: int, gro_n: int = 0, tnl_fd: int = -1, tnl_mac: int = 0) -> LoopParams:
    """A loop's LoopParams with the numbers of its encapsulation's row, looked up here once."""
    egress_path, ingress_path = ENCAP_PATHS[encap.code]
    return LoopParams(code=encap.code, dev_fd=dev_fd, sock_fd=sock_fd, port=port,
                      timeout_ms=timeout_ms, l3_off=l3_off, gro_n=gro_n,
                      send_port=0 if encap.builds_outer else port,  # a raw IP socket: no port
                      outer_len=IPV4_UDP_HLEN if encap.builds_outer else 0,
                      sup_head=super_head(encap), rx_view=receive_view(encap),
                      egress_path=egress_path, ingress_path=ingress_path,
                      tnl_fd=tnl_fd, tnl_mac=tnl_mac)


class EgressIO(NamedTuple):
    ctl: np.ndarray  # uint8[CTL_SIZE]: Python writes, the loop reads (stop, return each batch)
    stats: np.ndarray  # uint64[ST_SIZE]: written by the loop only
    pollfd: np.ndarray  # int32[POLLFD]
    msgs: np.ndarray  # int64[rows, MMSG]: struct mmsghdr
    iovs: np.ndarray  # int64[rows, IOVEC]: struct iovec
    addrs: np.ndarray  # uint8[rows, 16]: struct sockaddr_in
    ctrl: np.ndarray  # uint8[rows * GSO_CMSG]: one UDP_SEGMENT cmsg per message
    msg_fd: np.ndarray  # int64[rows]: the socket each message leaves by (UDP GSO)
    sup: np.ndarray  # uint8[SUP_HEAD + UNIT_ROW]: offload device read (virtio_net_hdr + up to
    #                  64 KiB) at SUP_HEAD, room before it for a tunnel-GSO frame's headers
    gso_fds: np.ndarray  # int64[]: UDP sockets that send with UDP_SEGMENT; empty: no GSO
    probe: np.ndarray  # uint8[BUFSIZE]: the first segment of a tunnel-GSO candidate
    tnl_info: np.ndarray  # int64[INFO_SIZE]: what offload.tunnel.encap_super reports


class IngressIO(NamedTuple):
    ctl: np.ndarray
    stats: np.ndarray
    pollfd: np.ndarray
    msgs: np.ndarray
    iovs: np.ndarray
    addrs: np.ndarray
    out: np.ndarray  # uint8[rows, UNIT_ROW]: offload device writes that coalesce builds
    out_lens: np.ndarray  # int32[rows]
    units: np.ndarray  # int64[UNIT_FIELDS, rows]: coalesce_into's per-unit bookkeeping
    gro: np.ndarray  # uint8[gro_n, GRO_PAD + GRO_BUF]: 64 KiB receive buffers with UDP_GRO
    gro_ctrl: np.ndarray  # uint8[gro_n, GRO_CMSG]: their control data
    gro_len: np.ndarray  # int64[gro_n]: bytes each message held
    gro_seg: np.ndarray  # int64[gro_n]: its UDP_GRO segment size
    gro_src: np.ndarray  # int64[gro_n]: its sender (host-order IPv4)
    probe: np.ndarray  # uint8[BUFSIZE]: the first segment of a tunnel-GSO packet received whole
    tnl_info: np.ndarray  # int64[INFO_SIZE]: what offload.tunnel.decap_super reports


def _common(rows: int) -> dict[str, np.ndarray]:
    return {"ctl": np.zeros(CTL_SIZE, dtype=np.uint8),
            "stats": np.zeros(ST_SIZE, dtype=np.uint64),
            "pollfd": np.zeros(POLLFD, dtype=np.int32),
            "msgs": np.zeros((rows, MMSG), dtype=np.int64),
            "iovs": np.zeros((rows, IOVEC), dtype=np.int64),
            "addrs": np.zeros((rows, SOCKADDR_IN_SIZE), dtype=np.uint8)}


def new_egress_io(rows: int, offload: bool, gso_fds: list[int]) -> EgressIO:
    return EgressIO(**_common(rows),
                    ctrl=np.zeros(rows * GSO_CMSG, dtype=np.uint8),
                    msg_fd=np.zeros(rows, dtype=np.int64),
                    sup=new_sup() if offload else np.zeros(1, dtype=np.uint8),
                    gso_fds=np.array(gso_fds, dtype=np.int64),
                    probe=np.zeros(BUFSIZE if offload else 1, dtype=np.uint8),
                    tnl_info=np.zeros(INFO_SIZE, dtype=np.int64))


def gro_messages(rows: int) -> int:
    """Messages per recvmmsg with UDP_GRO on (LoopParams.gro_n)."""
    return min(GRO_MESSAGES, rows)


def new_ingress_io(rows: int, offload: bool, gro: bool) -> IngressIO:
    if offload:
        out, out_lens = new_units(rows)
    else:
        out, out_lens = np.zeros((1, 1), np.uint8), np.zeros(1, np.int32)
    slots = gro_messages(rows) if gro else 1
    return IngressIO(**_common(rows), out=out, out_lens=out_lens,
                     units=new_unit_scratch(rows if offload else 1),
                     gro=np.zeros((slots, GRO_BUF + GRO_PAD if gro else 1), dtype=np.uint8),
                     gro_ctrl=np.zeros((slots, GRO_CMSG), dtype=np.uint8),
                     gro_len=np.zeros(slots, dtype=np.int64),
                     gro_seg=np.zeros(slots, dtype=np.int64),
                     gro_src=np.zeros(slots, dtype=np.int64),
                     probe=np.zeros(BUFSIZE if gro and offload else 1, dtype=np.uint8),
                     tnl_info=np.zeros(INFO_SIZE, dtype=np.int64))
