"""The compiled driver: one numba loop per direction that calls libc itself, without the GIL.

pyloop.py pays ~75 us of Python per traversal (select wake-up, os.readv, dispatching the
kernel, numpy bookkeeping, sendto). Here each direction is one @njit(nogil=True) function that
polls, reads a batch into the batch rows at HEADROOM, runs the pipeline's step
(weft.packet.steps: the kernel of the backend kind and the drop tally, the same call
Pipeline.egress/ingress make) and sends the FORWARD rows itself (sendmmsg on egress, write()
into the device on ingress). It loops over many batches and only comes back to Python when
Python has work: a SLOW row for the scapy slow path, a live-trace observer that wants every
batch, a stop request, or an errno the loop cannot handle.

Each loop takes five argument groups (scratch.py: LoopParams and its direction's IO scratch;
weft.packet.steps: the batch, the peer table, the pipeline state), never loose arrays.
libc is reached through @intrinsic declarations (libc.py), so cache=True works and a
restarted daemon loads the machine code from __pycache__ instead of compiling for a minute
(jitcache.py says when that code is stale). The codes, stats slots and counted system
calls both loops share are in loopio.py, the UDP GSO/GRO message handling in udpgso.py.

Offload mode (a device opened by weft.dev.tundev with IFF_VNET_HDR + TUNSETOFFLOAD): every device
read and write carries a 10-byte virtio_net_hdr. Egress reads each frame (up to a 64 KiB TSO
super-frame) into one buffer and offload.split_super cuts it into ordinary packets in the
batch rows; ingress runs offload.coalesce over the FORWARD rows and writes each resulting
unit, so one write carries up to 64 segments of a TCP flow. Everything between (kernels, slow
path, observer) still sees one ordinary packet per row.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numba import config as numba_config
from numba import njit
from numba.core.errors import NumbaError

from weft.dev.udpopts import enable_udp_gro, probe_udp_offloads
from weft.dev.vnet_hdr import VNET_HDR_LEN
from weft.drivers import jitcache  # noqa: F401 - jitcache: the cache locator, before cache=True
from weft.drivers.driver import CompiledLoopUnavailable, Observer
from weft.drivers.libc import (
    EAGAIN,
    EINTR,
    EIO,
    IOV_BASE,
    IOV_LEN,
    IOVEC_SIZE,
    MH_CONTROL,
    MH_CONTROLLEN,
    MH_FLAGS,
    MH_IOV,
    MH_IOVLEN,
    MH_LEN,
    MH_NAME,
    MH_NAMELEN,
    MSG_DONTWAIT,
    MSG_TRUNC,
    POLLERR,
    POLLHUP,
    SOCKADDR_IN_SIZE,
    get_errno,
    read,
    recvmmsg,
    sockaddr_ip,
)
from weft.drivers.loopio import (
    CTL_EACH_BATCH,
    CTL_STOP,
    ERROR_SLOTS,
    HARD_ERRNOS,
    ONE,
    RET_BATCH,
    RET_ERROR,
    RET_SLOW,
    RET_STOP,
    ST_BATCHES,
    ST_COALESCE_FAILED,
    ST_DEVICE_IO,
    ST_ERR_AGAIN,
    ST_ERR_MSGSIZE,
    ST_ERR_NOBUFS,
    ST_ERR_UNREACH,
    ST_GSO_REFUSED,
    ST_LAST_ERRNO,
    ST_MESSAGES,
    ST_PACKETS,
    ST_RETURNS,
    ST_SENT,
    ST_SPLIT_MALFORMED,
    ST_SPLIT_NO_ROOM,
    ST_SPLIT_UNSUPPORTED,
    ST_SYSCALLS,
    ST_TUNNEL_GSO,
    ST_WAKEUPS,
    count_error,
    count_split,
    is_hard,
    send_all,
    send_by_socket,
    wait_readable,
    write_one,
)
from weft.drivers.scratch import (
    EgressIO,
    IngressIO,
    LoopParams,
    gro_messages,
    new_egress_io,
    new_ingress_io,
)
from weft.drivers.udpgso import (
    GRO_CMSG,
    GRO_PAD,
    gro_size,
    gro_split,
    gso_messages,
    row_messages,
)
from weft.packet import steps
from weft.packet.fastpath import HEADROOM, Batch
from weft.packet.offload import ERR_NO_ROOM, coalesce, split_super, unit_segments
from weft.packet.pipeline import Pipeline
from weft.packet.reasons import Verdict
from weft.packet.steps import KIND_VXLAN, batch_arrays
from weft.packet.table import CFG_MTU

log = logging.getLogger(__name__)

BATCH = 64
# Offload mode: a 64 KiB TSO super-frame splits into ~45 MSS-sized rows, so a batch of 64 would
# hold one frame; 128 holds two or three and gives coalesce more segments to merge.
OFFLOAD_BATCH = 128
POLL_MS = 100  # how long a loop sleeps in poll() before it looks at the stop flag again
_FORWARD = int(Verdict.FORWARD)
_SLOW = int(Verdict.SLOW)


# ---- egress: device -> peers --------------------------------------------------------------------


@njit(cache=True, nogil=True)
def egress_loop(p, io, b, peers, state):
    """Read batches from the device, encapsulate, sendmmsg; returns (code, rows, errno).

    p: LoopParams (p.sock_fd sends), io: EgressIO, then the pipeline's BatchArrays, PeerArrays
    and PipelineState (weft.packet.steps). p.l3_off < 0: a plain device, each read is one
    packet straight into a row. p.l3_off >= 0 (14 for a TAP, 0 for a TUN): an offload device;
    each read lands in io.sup (virtio_net_hdr + frame) and split_super spreads it over as many
    rows as it has segments. io.gso_fds not empty: UDP sockets that take UDP_SEGMENT (see
    udpgso.gso_messages); the FORWARD rows leave as GSO messages on them until the kernel
    refuses one, then one datagram per row on p.sock_fd as without them.
    """
    stats = io.stats
    bufs = b.bufs
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    offload = p.l3_off >= 0
    sup_base = io.sup.ctypes.data
    sup_cap = io.sup.shape[0]
    pending = 0  # length of a frame waiting in sup: it did not fit the rows the batch had left
    full = False  # the last batch filled every row: more is likely queued, skip poll()
    rev = 0
    while True:
        if io.ctl[CTL_STOP]:
            return RET_STOP, 0, 0
        rev = 0
        if not full and pending == 0:
            rev = wait_readable(io.pollfd, p.dev_fd, p.timeout_ms, stats)
            if rev < 0:
                return RET_ERROR, 0, -rev
            if rev == 0:
                continue
        n = 0
        err = 0
        while n < rows:
            if offload and pending:
                got = pending
                pending = 0
            else:
                stats[ST_SYSCALLS] += ONE
                if offload:
                    got = read(p.dev_fd, sup_base, sup_cap)
                else:
                    got = read(p.dev_fd, base + n * stride + HEADROOM, cap)
                if got <= 0:
                    e = get_errno() if got < 0 else errno.ENODEV  # EOF: a TUN never reads 0 bytes
                    if e == EINTR:
                        continue
                    if e != EAGAIN:
                        err = e
                    break
                stats[ST_DEVICE_IO] += ONE
            if not offload:
                b.lens[n] = got
                n += 1
                continue
            r = split_super(io.sup, got, p.l3_off, bufs, b.lens, n)
            if r > 0:
                n += r
            elif r == ERR_NO_ROOM and n > 0:
                pending = got  # send what the rows hold, then split this frame from row 0
                break
            else:
                count_split(stats, r)
        full = n == rows or pending > 0
        if n == 0:
            if err != 0:
                return RET_ERROR, 0, err
            if rev & (POLLERR | POLLHUP):  # readable by error, nothing to read: detached
                return RET_ERROR, 0, EIO
            continue
        stats[ST_BATCHES] += ONE
        stats[ST_PACKETS] += np.uint64(n)
        _, slow = steps.egress(p.kind, n, b, peers, state)
        if io.gso_fds.shape[0] > 0 and stats[ST_GSO_REFUSED] == 0:
            m = gso_messages(p.kind, n, b, p.port, io)
            e = send_by_socket(io.msgs, io.msg_fd, m, io.pollfd, stats)
        else:
            # vxlan sends on a raw IP socket: the port is in the header the fast path wrote
            m = row_messages(n, b, 0 if p.kind == KIND_VXLAN else p.port, io)
            e = send_all(p.sock_fd, io.msgs, 0, m, io.pollfd, stats)
        if e != 0:
            return RET_ERROR, n, e
        if slow:
            stats[ST_RETURNS] += ONE
            return RET_SLOW, n, 0
        if err != 0:
            return RET_ERROR, n, err
        if io.ctl[CTL_EACH_BATCH]:
            stats[ST_RETURNS] += ONE
            return RET_BATCH, n, 0


# ---- ingress: peers -> device -------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _aim_receive_buffers(p, io, b):
    """Point each recvmmsg message at its sockaddr and buffer; these never move."""
    bufs = b.bufs
    gro = io.gro
    slots = p.gro_n if p.gro_n > 0 else bufs.shape[0]
    for i in range(slots):
        if p.gro_n > 0:
            io.iovs[i, IOV_BASE] = gro.ctypes.data + i * gro.strides[0] + GRO_PAD
            io.iovs[i, IOV_LEN] = gro.shape[1] - GRO_PAD
            io.msgs[i, MH_CONTROL] = io.gro_ctrl.ctypes.data + i * io.gro_ctrl.strides[0]
        else:
            io.iovs[i, IOV_BASE] = bufs.ctypes.data + i * bufs.strides[0] + HEADROOM
            io.iovs[i, IOV_LEN] = bufs.shape[1] - HEADROOM
            io.msgs[i, MH_CONTROL] = 0
        io.msgs[i, MH_NAME] = io.addrs.ctypes.data + i * SOCKADDR_IN_SIZE
        io.msgs[i, MH_IOV] = io.iovs.ctypes.data + i * IOVEC_SIZE
        io.msgs[i, MH_IOVLEN] = 1
        io.msgs[i, MH_CONTROLLEN] = 0
    return slots


@njit(cache=True, nogil=True)
def ingress_loop(p, io, b, peers, state):
    """recvmmsg batches, check/decapsulate, write the FORWARD rows; returns (code, rows, errno).

    p: LoopParams (p.sock_fd receives), io: IngressIO, then the pipeline's BatchArrays,
    PeerArrays and PipelineState. p.l3_off < 0: a plain device, one write() per FORWARD row.
    p.l3_off >= 0: an offload device; coalesce turns the FORWARD rows into units in io.out
    (virtio_net_hdr + packet, consecutive segments of a TCP flow merged into one super-frame)
    and each unit is one write(). p.gro_n > 0: the socket has UDP_GRO on, so one message can
    hold many datagrams of a flow; each recvmmsg takes gro_n of them into the 64 KiB rows of
    io.gro and gro_split cuts them into batch rows by the segment size of their UDP_GRO cmsg.
    Ingress kernels never say SLOW (nothing from a peer is answered), so only stop, observer
    and errors come back to Python.
    """
    stats = io.stats
    msgs = io.msgs
    bufs = b.bufs
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    out_base = io.out.ctypes.data
    out_stride = io.out.strides[0]
    gro_on = p.gro_n > 0
    slots = _aim_receive_buffers(p, io, b)  # messages per recvmmsg
    full = False
    got = 0  # GRO messages received by the last recvmmsg, gi/gpos: how far they are split
    gi = 0
    gpos = 0
    while True:
        if io.ctl[CTL_STOP]:
            return RET_STOP, 0, 0
        if gi >= got:  # nothing carried over from the last call: receive
            if not full:
                rev = wait_readable(io.pollfd, p.sock_fd, p.timeout_ms, stats)
                if rev < 0:
                    return RET_ERROR, 0, -rev
                if rev == 0:
                    continue
            for i in range(slots):  # reset the value-result fields
                msgs[i, MH_NAMELEN] = SOCKADDR_IN_SIZE
                msgs[i, MH_CONTROLLEN] = GRO_CMSG if gro_on else 0
                msgs[i, MH_FLAGS] = 0
                msgs[i, MH_LEN] = 0
            stats[ST_SYSCALLS] += ONE
            got = recvmmsg(p.sock_fd, msgs.ctypes.data, slots, MSG_DONTWAIT, 0)
            gi = 0
            gpos = 0
            if got < 0:
                got = 0
                full = False
                e = get_errno()
                if e == EAGAIN or e == EINTR:
                    continue
                if is_hard(e):
                    return RET_ERROR, 0, e
                # A pending ICMP error on the socket (ECONNREFUSED and kin) is consumed by this
                # call; count it and go on receiving.
                count_error(stats, e)
                continue
            full = got == slots
            if got == 0:
                continue
            stats[ST_MESSAGES] += np.uint64(got)
            for i in range(got):
                ln = msgs[i, MH_LEN] & 0xFFFFFFFF
                truncated = ((msgs[i, MH_FLAGS] & 0xFFFFFFFF) & MSG_TRUNC) != 0
                if gro_on:
                    seg = gro_size(io.gro_ctrl[i], msgs[i, MH_CONTROLLEN])
                    io.gro_len[i] = ln
                    io.gro_seg[i] = seg if 0 < seg < ln else ln  # no cmsg: one datagram
                    if truncated or ln == 0:  # over 64 KiB cannot be; empty is one row too
                        io.gro_len[i] = cap + 1
                        io.gro_seg[i] = cap + 1
                    io.gro_src[i] = sockaddr_ip(io.addrs[i])
                else:
                    b.lens[i] = cap + 1 if truncated else ln  # too long: dropped as TRUNCATED
                    b.src_ip[i] = sockaddr_ip(io.addrs[i])
        if gro_on:
            n, gi, gpos = gro_split(p.kind, io, got, gi, gpos, b, cap, state.cfg[CFG_MTU])
        else:
            n = got
            got = 0
        stats[ST_BATCHES] += ONE
        stats[ST_PACKETS] += np.uint64(n)
        steps.ingress(p.kind, n, b, peers, state)
        if p.l3_off >= 0:
            units = coalesce(bufs, b.out_off, b.out_len, b.verdict, n, p.l3_off, io.out,
                             io.out_lens)
            if units < 0:
                # Cannot happen with `out` sized by new_units(rows); counted, not hidden.
                for i in range(n):
                    if b.verdict[i] == _FORWARD:
                        stats[ST_COALESCE_FAILED] += ONE
                units = 0
            for m in range(units):
                r = write_one(p.dev_fd, out_base + m * out_stride, io.out_lens[m], stats)
                if r < 0:
                    return RET_ERROR, n, -r
                if r:
                    stats[ST_SENT] += np.uint64(unit_segments(io.out[m], io.out_lens[m]))
        else:
            for i in range(n):
                if b.verdict[i] != _FORWARD:
                    continue
                r = write_one(p.dev_fd, base + i * stride + b.out_off[i], b.out_len[i], stats)
                if r < 0:
                    return RET_ERROR, n, -r
                stats[ST_SENT] += np.uint64(r)
        if io.ctl[CTL_EACH_BATCH]:
            stats[ST_RETURNS] += ONE
            return RET_BATCH, n, 0


# ---- the Python side ----------------------------------------------------------------------------


@dataclass
class _Direction:
    """One direction's batch, loop arguments and compiled loop (owned by its thread)."""

    name: str
    batch: Batch
    params: LoopParams
    io: EgressIO | IngressIO
    loop: Callable[..., tuple[int, int, int]]

    @property
    def stats(self) -> np.ndarray:
        return self.io.stats


class HotLoop:
    """The compiled driver (a weft.drivers.driver.Driver): one numba loop per direction.

    device_fd is the TUN/TAP, rx_fd the socket bound to the backend port, tx_fd the socket
    that sends (the raw IP socket for vxlan, the same UDP socket for udp), port the UDP port
    peers listen on. The fds stay owned by the caller (close them after stop()). offload=True
    when the device was opened in weft.dev.tundev's "offload" mode (IFF_VNET_HDR, TSO): the loops
    then split and coalesce super-frames, and every write into the device carries a
    virtio_net_hdr, the slow path's answers included.

    gso_fds: UDP sockets to send with UDP GSO (weft.drivers.pyloop.Transport.gso_sockets); used
    only if this kernel takes UDP_SEGMENT, else egress stays on tx_fd. gro=True turns UDP_GRO
    on for rx_fd at start(), if the kernel takes it. offloads() says what is in use.

    Raises CompiledLoopUnavailable (from the constructor or start()) when numba cannot run the
    loops here; nothing else is caught.
    """

    def __init__(self, pipeline: Pipeline, device_fd: int, rx_fd: int, tx_fd: int, port: int,
                 *, batch: int | None = None, poll_ms: int = POLL_MS, offload: bool = False,
                 gso_fds: Sequence[int] = (), gro: bool = False,
                 observer: Observer | None = None) -> None:
        if numba_config.DISABLE_JIT:
            # The libc intrinsics exist only in compiled code.
            raise CompiledLoopUnavailable("numba JIT is disabled (NUMBA_DISABLE_JIT=1)")
        self.pipeline = pipeline
        self.fd = device_fd
        self.rx_fd = rx_fd
        self.poll_ms = poll_ms
        self.offload = offload
        # Where IPv4 starts in a device packet: after Ethernet on the vxlan TAP, at 0 on the udp
        # TUN; -1 tells the loops the device has no virtio_net_hdr.
        self.l3_off = (14 if pipeline.kind_code == KIND_VXLAN else 0) if offload else -1
        self.batch = batch or (OFFLOAD_BATCH if offload else BATCH)
        kernel = probe_udp_offloads() if (gso_fds or gro) else {}
        # What the kernel refused is said, not hidden: status shows it next to the mode.
        self.udp_offloads = {
            "gso": ("on" if kernel.get("udp_segment") else "refused by the kernel")
            if gso_fds else "off",
            "gro": ("on" if kernel.get("udp_gro") else "refused by the kernel")
            if gro else "off",
        }
        gso = list(gso_fds) if self.udp_offloads["gso"] == "on" else []
        params = LoopParams(kind=pipeline.kind_code, dev_fd=device_fd, sock_fd=tx_fd, port=port,
                            timeout_ms=poll_ms, l3_off=self.l3_off, gro_n=0)
        self.egress = _Direction("egress", Batch(self.batch), params,
                                 new_egress_io(self.batch, offload, gso), egress_loop)
        self.ingress = self._ingress(port, gro=self.udp_offloads["gro"] == "on")
        self._observer: Observer | None = None
        self.observer = observer
        self.slow_write_errors = 0  # slow-path answers the device refused
        self.fatal: dict[str, int] = {}  # direction -> errno that ended its thread
        self.crashed: dict[str, str] = {}  # direction -> the exception that killed its thread
        self.compile_seconds = 0.0
        os.set_blocking(device_fd, False)
        os.set_blocking(rx_fd, False)
        self.threads = [
            threading.Thread(target=self._run, args=(self.egress,), name="weft-egress",
                             daemon=True),
            threading.Thread(target=self._run, args=(self.ingress,), name="weft-ingress",
                             daemon=True),
        ]

    def _ingress(self, port: int, gro: bool) -> _Direction:
        params = LoopParams(kind=self.pipeline.kind_code, dev_fd=self.fd, sock_fd=self.rx_fd,
                            port=port, timeout_ms=self.poll_ms, l3_off=self.l3_off,
                            gro_n=gro_messages(self.batch) if gro else 0)
        return _Direction("ingress", Batch(self.batch), params,
                          new_ingress_io(self.batch, self.offload, gro), ingress_loop)

    # Trace hook, observer(direction, batch, n), as on PyLoop. Setting it makes both loops
    # come back after every batch; None lets them run free again. In offload mode the rows are
    # still ordinary packets: after split_super on egress, before coalesce on ingress.
    @property
    def observer(self) -> Observer | None:
        return self._observer

    @observer.setter
    def observer(self, fn: Observer | None) -> None:
        self._observer = fn
        for side in (self.egress, self.ingress):
            side.io.ctl[CTL_EACH_BATCH] = 1 if fn is not None else 0

    def compile(self) -> float:
        """Load (or compile) both loops for these argument types; returns seconds taken.

        Each loop is called once with its stop flag already set, which returns before any
        system call, so the first real packet does not wait for the compiler. A numba error
        here means numba cannot build the loops on this host: CompiledLoopUnavailable.
        """
        t0 = time.perf_counter()
        for side in (self.egress, self.ingress):
            ctl = side.io.ctl.copy()
            ctl[CTL_STOP] = 1
            try:
                self._call(side, side.io._replace(ctl=ctl))
            except NumbaError as exc:
                raise CompiledLoopUnavailable(f"numba cannot compile the {side.name} loop: "
                                              f"{exc}") from exc
        self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def start(self) -> None:
        self.compile()
        # GRO only once the loop that reads 64 KiB messages is sure to run: a loop with
        # row-sized buffers would get merged datagrams cut short.
        if self.ingress.params.gro_n and not enable_udp_gro(self.rx_fd):
            # The probe said yes but this socket says no: receive without GRO (the same
            # compiled loop, with row-sized buffers) and say so in offloads().
            self.udp_offloads["gro"] = "refused on the socket"
            self.ingress = self._ingress(self.ingress.params.port, gro=False)
            self.threads[1] = threading.Thread(target=self._run, args=(self.ingress,),
                                               name="weft-ingress", daemon=True)
            self.observer = self._observer
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        for side in (self.egress, self.ingress):
            side.io.ctl[CTL_STOP] = 1
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=timeout)

    @property
    def errors(self) -> dict[str, int]:
        """{"send", "write"} as every driver has, plus the breakdown by kind."""
        e, i = self.egress.stats, self.ingress.stats
        out = {
            "send": int(sum(int(e[s]) for s in ERROR_SLOTS)),
            "write": int(sum(int(i[s]) for s in ERROR_SLOTS)) + self.slow_write_errors,
            "send_full": int(e[ST_ERR_AGAIN]),
            "send_nobufs": int(e[ST_ERR_NOBUFS]),
            "send_unreachable": int(e[ST_ERR_UNREACH]),
            "send_msgsize": int(e[ST_ERR_MSGSIZE]),
        }
        out.update({f"fatal_{k}": v for k, v in self.fatal.items()})
        out.update({f"crashed_{k}": 1 for k in self.crashed})
        return out

    def drops(self) -> dict[str, int]:
        """Packets the offload step dropped, by cause, under names for `weft status` drops.

        A refused device read never became rows, so the fast path never counted it; without
        these the drop report would miss them.
        """
        e, i = self.egress.stats, self.ingress.stats
        counts = {
            "offload_split_malformed": int(e[ST_SPLIT_MALFORMED]),
            "offload_split_no_room": int(e[ST_SPLIT_NO_ROOM]),
            "offload_split_unsupported": int(e[ST_SPLIT_UNSUPPORTED]),
            "offload_coalesce_failed": int(i[ST_COALESCE_FAILED]),
        }
        return {k: v for k, v in counts.items() if v}

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-direction loop figures for status: wake-ups, batches, packets, system calls.

        `device_io` is device reads (egress) or writes (ingress); in offload mode packets/
        device_io is how many packets one super-frame carried on average. While the loops run,
        a batch may be counted by the pipeline and not yet here (sent after its send returns):
        compare with the pipeline's counters only after stop().
        """
        out = {}
        for side in (self.egress, self.ingress):
            s = side.stats
            out[side.name] = {
                "wakeups": int(s[ST_WAKEUPS]), "batches": int(s[ST_BATCHES]),
                "packets": int(s[ST_PACKETS]), "syscalls": int(s[ST_SYSCALLS]),
                "sent": int(s[ST_SENT]), "device_io": int(s[ST_DEVICE_IO]),
                "returns": int(s[ST_RETURNS]), "last_errno": int(s[ST_LAST_ERRNO]),
                "messages": int(s[ST_MESSAGES]),
                **({"tunnel_gso": int(s[ST_TUNNEL_GSO])} if side is self.ingress else {}),
            }
        return out

    def offloads(self) -> dict[str, str]:
        """UDP GSO / GRO for status: "on", "off", or why not (refused by kernel or at a send)."""
        out = dict(self.udp_offloads)
        if self.egress.stats[ST_GSO_REFUSED]:
            errno_ = int(self.egress.stats[ST_LAST_ERRNO])
            out["gso"] = f"refused at a send ({os.strerror(errno_)}): one datagram per packet"
        return out

    # -- threads ----------------------------------------------------------------------------
    def _call(self, side: _Direction, io: EgressIO | IngressIO) -> tuple[int, int, int]:
        p = self.pipeline
        return side.loop(side.params, io, batch_arrays(side.batch), p.peers, p.state)

    def _run(self, side: _Direction) -> None:
        try:
            self._serve(side)
        except Exception as exc:  # noqa: BLE001 - the thread's boundary: record, log, end
            # Uncaught, the exception would only reach threading.excepthook (stderr) and the
            # loop would stop silently; recorded, `weft status` errors and tests show it.
            self.crashed[side.name] = repr(exc)
            log.exception("hot loop thread %s died", side.name)

    def _serve(self, side: _Direction) -> None:
        while True:
            code, n, err = self._call(side, side.io)
            if code == RET_STOP:
                return
            if code == RET_SLOW or (code == RET_ERROR and n and side is self.egress):
                self._slow(side.batch, n)
            observer = self._observer
            if observer is not None and n:
                observer(side.name, side.batch, n)
            if code == RET_ERROR:
                if err in HARD_ERRNOS:
                    log.error("%s loop ends: %s", side.name, os.strerror(err))
                    self.fatal[side.name] = err
                    return
                log.warning("%s loop: %s; resuming", side.name, os.strerror(err))
                time.sleep(self.poll_ms / 1000)  # do not spin on a persistent error

    def _slow(self, batch: Batch, n: int) -> None:
        """Run the scapy slow path for the SLOW rows and write its answers into the device."""
        # An offload device reads a virtio_net_hdr before every frame; all zeros says "no
        # GSO, checksums complete", which is what the slow path builds.
        prefix = bytes(VNET_HDR_LEN) if self.offload else b""
        for i in np.flatnonzero(batch.verdict[:n] == _SLOW):
            packet = batch.bufs[i, HEADROOM:HEADROOM + batch.lens[i]].tobytes()
            for answer in self.pipeline.slow(packet, int(batch.reason[i])).writes:
                try:
                    os.write(self.fd, prefix + answer)
                except OSError as exc:
                    self.slow_write_errors += 1
                    log.debug("device write failed: %s", exc)
