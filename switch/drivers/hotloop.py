"""The compiled IO driver: one numba loop per direction that calls libc itself, without the GIL.

pyloop.py pays ~75 us of Python per traversal (select wake-up, os.readv, dispatching a
13-argument kernel, numpy bookkeeping, sendto). Here each direction is one @njit(nogil=True)
function that polls, reads a batch into the Batch rows at HEADROOM, runs the fastpath kernel as a
plain function call, and sends the FORWARD rows itself (sendmmsg on egress, write() into the
device on ingress). It loops over many batches and only comes back to Python when Python has
work: a SLOW row for the scapy slow path, a live-trace observer that wants every batch, a stop
request, or an errno the loop cannot handle.

libc is reached through @intrinsic declarations (libc.py), so cache=True works and a
restarted daemon loads the machine code from __pycache__ instead of compiling for a minute
(jitcache.py says when that code is stale). The codes, stats slots and counted system
calls both loops share are in loopio.py, the UDP GSO/GRO message handling in
udpgso.py.

Counters stay where `weft status` reads them: the kernels update pipeline.counters, and the loops
add fast-path DROP reasons straight into pipeline.drops[direction], so Pipeline.count_drops is
not called (and must not be, or drops would count twice).

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

import numpy as np
from numba import njit

from weft.dev.udpopts import enable_udp_gro, probe_udp_offloads
from weft.drivers import jitcache  # noqa: F401 - jitcache: the cache locator, before cache=True
from weft.drivers.libc import (
    EAGAIN,
    EINTR,
    EIO,
    MMSG,
    MSG_DONTWAIT,
    MSG_TRUNC,
    POLLERR,
    POLLHUP,
    get_errno,
    read,
    recvmmsg,
    sockaddr_ip,
)
from weft.drivers.loopio import (
    CTL_EACH_BATCH,
    CTL_SIZE,
    CTL_STOP,
    ERROR_SLOTS,
    HARD_ERRNOS,
    KIND_VXLAN,
    KINDS,
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
    ST_SIZE,
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
    tally,
    wait_readable,
    write_one,
)
from weft.drivers.udpgso import (
    GRO_BUF,
    GRO_CMSG,
    GRO_MESSAGES,
    GRO_PAD,
    GSO_CMSG,
    gro_size,
    gro_split,
    gso_messages,
    row_messages,
)
from weft.packet import fastpath
from weft.packet.fastpath import HEADROOM, Batch
from weft.packet.offload import (
    ERR_NO_ROOM,
    GSO_TCPV4,
    UNIT_ROW,
    VNET_HDR_LEN,
    coalesce,
    new_units,
    split_super,
)
from weft.packet.pipeline import EGRESS, INGRESS, Pipeline
from weft.packet.reasons import Verdict
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
def egress_loop(kind, dev_fd, tx_fd, port, timeout_ms, ctl, stats, drops,
                bufs, lens, out_off, out_len, verdict, reason, dst_ip,
                cfg, present, public_ip, vtep_mac, counters,
                pollfd, msgs, iovs, addrs, l3_off, sup, gso_fds, ctrl, msg_fd):
    """Read batches from the device, encapsulate, sendmmsg; returns (code, rows, errno).

    l3_off < 0: a plain device, each read is one packet straight into a row. l3_off >= 0 (14
    for a TAP, 0 for a TUN): an offload device; each read lands in `sup` (virtio_net_hdr +
    frame) and split_super spreads it over as many rows as it has segments.
    gso_fds not empty: UDP sockets that take UDP_SEGMENT (see udpgso.gso_messages); the FORWARD rows
    leave as GSO messages on them until the kernel refuses one, then one datagram per row on
    tx_fd as without them.
    """
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    offload = l3_off >= 0
    sup_base = sup.ctypes.data
    sup_cap = sup.shape[0]
    pending = 0  # length of a frame waiting in sup: it did not fit the rows the batch had left
    full = False  # the last batch filled every row: more is likely queued, skip poll()
    rev = 0
    while True:
        if ctl[CTL_STOP]:
            return RET_STOP, 0, 0
        rev = 0
        if not full and pending == 0:
            rev = wait_readable(pollfd, dev_fd, timeout_ms, stats)
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
                    got = read(dev_fd, sup_base, sup_cap)
                else:
                    got = read(dev_fd, base + n * stride + HEADROOM, cap)
                if got <= 0:
                    e = get_errno() if got < 0 else errno.ENODEV  # EOF: a TUN never reads 0 bytes
                    if e == EINTR:
                        continue
                    if e != EAGAIN:
                        err = e
                    break
                stats[ST_DEVICE_IO] += ONE
            if not offload:
                lens[n] = got
                n += 1
                continue
            r = split_super(sup, got, l3_off, bufs, lens, n)
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
        if kind == KIND_VXLAN:
            fastpath.vxlan_egress(bufs, lens, n, out_off, out_len, verdict, reason, dst_ip,
                                  cfg, present, public_ip, vtep_mac, counters)
            dport = 0  # a raw IP socket: the port is in the header the kernel wrote
        else:
            fastpath.udp_egress(bufs, lens, n, out_off, out_len, verdict, reason, dst_ip,
                                cfg, present, public_ip, counters)
            dport = port
        slow = tally(n, verdict, reason, drops)
        if gso_fds.shape[0] > 0 and stats[ST_GSO_REFUSED] == 0:
            m = gso_messages(kind, n, bufs, out_off, out_len, verdict, dst_ip, port, gso_fds,
                              msgs, iovs, addrs, ctrl, msg_fd)
            e = send_by_socket(msgs, msg_fd, m, pollfd, stats)
        else:
            m = row_messages(n, bufs, out_off, out_len, verdict, dst_ip, dport, msgs, iovs,
                              addrs)
            e = send_all(tx_fd, msgs, 0, m, pollfd, stats)
        if e != 0:
            return RET_ERROR, n, e
        if slow:
            stats[ST_RETURNS] += ONE
            return RET_SLOW, n, 0
        if err != 0:
            return RET_ERROR, n, err
        if ctl[CTL_EACH_BATCH]:
            stats[ST_RETURNS] += ONE
            return RET_BATCH, n, 0


# ---- ingress: peers -> device -------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _unit_segments(u, ulen):
    """How many packets a coalesce unit carries (its header says TCPV4 when it merged some)."""
    if u[1] != GSO_TCPV4:
        return 1
    hdr_len = np.int64(u[2]) | (np.int64(u[3]) << 8)
    gso_size = np.int64(u[4]) | (np.int64(u[5]) << 8)
    payload = np.int64(ulen) - VNET_HDR_LEN - hdr_len
    if gso_size <= 0 or payload <= 0:
        return 1
    return (payload + gso_size - 1) // gso_size


@njit(cache=True, nogil=True)
def ingress_loop(kind, rx_fd, dev_fd, timeout_ms, ctl, stats, drops,
                 bufs, lens, src_ip, out_off, out_len, verdict, reason, dst_ip,
                 cfg, present, public_ip, sender_keys, counters,
                 pollfd, msgs, iovs, addrs, l3_off, out, out_lens,
                 gro_n, gro, gro_ctrl, gro_len, gro_seg, gro_src):
    """recvmmsg batches, check/decapsulate, write the FORWARD rows; returns (code, rows, errno).

    l3_off < 0: a plain device, one write() per FORWARD row. l3_off >= 0: an offload device;
    coalesce turns the FORWARD rows into units in `out` (virtio_net_hdr + packet, consecutive
    segments of a TCP flow merged into one super-frame) and each unit is one write().
    gro_n > 0: rx_fd has UDP_GRO on, so one message can hold many datagrams of a flow; each
    recvmmsg takes gro_n of them into the 64 KiB rows of `gro` and gro_split cuts them into
    batch rows by the segment size of their UDP_GRO cmsg.
    Ingress kernels never say SLOW (nothing from a peer is answered), so only stop, observer
    and errors come back to Python.
    """
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    out_base = out.ctypes.data
    out_stride = out.strides[0]
    slots = gro_n if gro_n > 0 else rows  # messages per recvmmsg
    for i in range(slots):  # the iovecs never move; only the value-result fields are reset
        if gro_n > 0:
            iovs[i, 0] = gro.ctypes.data + i * gro.strides[0] + GRO_PAD
            iovs[i, 1] = gro.shape[1] - GRO_PAD
            msgs[i, 4] = gro_ctrl.ctypes.data + i * gro_ctrl.strides[0]
        else:
            iovs[i, 0] = base + i * stride + HEADROOM
            iovs[i, 1] = cap
            msgs[i, 4] = 0
        msgs[i, 0] = addrs.ctypes.data + i * 16
        msgs[i, 2] = iovs.ctypes.data + i * 16
        msgs[i, 3] = 1
        msgs[i, 5] = 0
    full = False
    got = 0  # GRO messages received by the last recvmmsg, gi/gpos: how far they are split
    gi = 0
    gpos = 0
    while True:
        if ctl[CTL_STOP]:
            return RET_STOP, 0, 0
        if gi >= got:  # nothing carried over from the last call: receive
            if not full:
                rev = wait_readable(pollfd, rx_fd, timeout_ms, stats)
                if rev < 0:
                    return RET_ERROR, 0, -rev
                if rev == 0:
                    continue
            for i in range(slots):
                msgs[i, 1] = 16
                msgs[i, 5] = GRO_CMSG if gro_n > 0 else 0
                msgs[i, 6] = 0
                msgs[i, 7] = 0
            stats[ST_SYSCALLS] += ONE
            got = recvmmsg(rx_fd, msgs.ctypes.data, slots, MSG_DONTWAIT, 0)
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
                ln = msgs[i, 7] & 0xFFFFFFFF
                truncated = ((msgs[i, 6] & 0xFFFFFFFF) & MSG_TRUNC) != 0
                if gro_n > 0:
                    seg = gro_size(gro_ctrl[i], msgs[i, 5])
                    gro_len[i] = ln
                    gro_seg[i] = seg if 0 < seg < ln else ln  # no cmsg: one datagram
                    if truncated or ln == 0:  # over 64 KiB cannot be; empty is one row too
                        gro_len[i] = cap + 1
                        gro_seg[i] = cap + 1
                    gro_src[i] = sockaddr_ip(addrs[i])
                else:
                    lens[i] = cap + 1 if truncated else ln  # too long: dropped as TRUNCATED
                    src_ip[i] = sockaddr_ip(addrs[i])
        if gro_n > 0:
            n, gi, gpos = gro_split(kind, gro, gro_len, gro_seg, gro_src, got, gi, gpos, bufs,
                                     lens, src_ip, cap, cfg[CFG_MTU], stats)
        else:
            n = got
            got = 0
        stats[ST_BATCHES] += ONE
        stats[ST_PACKETS] += np.uint64(n)
        if kind == KIND_VXLAN:
            fastpath.vxlan_ingress(bufs, lens, src_ip, n, out_off, out_len, verdict, reason,
                                   dst_ip, cfg, present, public_ip, sender_keys, counters)
        else:
            fastpath.udp_ingress(bufs, lens, src_ip, n, out_off, out_len, verdict, reason,
                                 dst_ip, cfg, present, public_ip, sender_keys, counters)
        tally(n, verdict, reason, drops)
        if l3_off >= 0:
            units = coalesce(bufs, out_off, out_len, verdict, n, l3_off, out, out_lens)
            if units < 0:
                # Cannot happen with `out` sized by new_units(rows); counted, not hidden.
                for i in range(n):
                    if verdict[i] == _FORWARD:
                        stats[ST_COALESCE_FAILED] += ONE
                units = 0
            for m in range(units):
                r = write_one(dev_fd, out_base + m * out_stride, out_lens[m], stats)
                if r < 0:
                    return RET_ERROR, n, -r
                if r:
                    stats[ST_SENT] += np.uint64(_unit_segments(out[m], out_lens[m]))
        else:
            for i in range(n):
                if verdict[i] != _FORWARD:
                    continue
                r = write_one(dev_fd, base + i * stride + out_off[i], out_len[i], stats)
                if r < 0:
                    return RET_ERROR, n, -r
                stats[ST_SENT] += np.uint64(r)
        if ctl[CTL_EACH_BATCH]:
            stats[ST_RETURNS] += ONE
            return RET_BATCH, n, 0


# ---- the Python side ----------------------------------------------------------------------------


class _Side:
    """One direction's Batch, control/stat arrays and system-call scratch (owned by its thread).

    In offload mode egress also owns `sup`, the buffer one device read (virtio_net_hdr + up to
    64 KiB) lands in, and ingress owns `out`/`out_lens`, the write units of coalesce. In plain
    mode they are 1-element placeholders, so both modes share one compiled loop per direction.
    Egress keeps one UDP_SEGMENT cmsg slot and socket per message (`ctrl`, `msg_fd`); ingress
    with UDP GRO owns the 64 KiB receive buffers (`gro`), their control data and what each
    message held (length, segment size, sender).
    """

    def __init__(self, name: str, rows: int, offload: bool, gro: bool = False) -> None:
        self.name = name
        self.batch = Batch(rows)
        self.ctl = np.zeros(CTL_SIZE, dtype=np.uint8)
        self.stats = np.zeros(ST_SIZE, dtype=np.uint64)
        self.pollfd = np.zeros(2, dtype=np.int32)  # struct pollfd {int fd; short ev, rev}
        self.msgs = np.zeros((rows, MMSG), dtype=np.int64)  # struct mmsghdr
        self.iovs = np.zeros((rows, 2), dtype=np.int64)  # struct iovec
        self.addrs = np.zeros((rows, 16), dtype=np.uint8)  # struct sockaddr_in
        wants_sup = offload and name == "egress"
        self.sup = np.zeros(UNIT_ROW if wants_sup else 1, dtype=np.uint8)
        if offload and name == "ingress":
            self.out, self.out_lens = new_units(rows)
        else:
            self.out, self.out_lens = np.zeros((1, 1), np.uint8), np.zeros(1, np.int32)
        self.ctrl = np.zeros(rows * GSO_CMSG, dtype=np.uint8)
        self.msg_fd = np.zeros(rows, dtype=np.int64)
        self.gso_fds = np.zeros(0, dtype=np.int64)  # HotLoop sets the sockets when GSO is on
        slots = min(GRO_MESSAGES, rows) if gro else 1
        self.gro_n = slots if gro else 0
        self.gro = np.zeros((slots, GRO_BUF + GRO_PAD if gro else 1), dtype=np.uint8)
        self.gro_ctrl = np.zeros((slots, GRO_CMSG), dtype=np.uint8)
        self.gro_len = np.zeros(slots, dtype=np.int64)
        self.gro_seg = np.zeros(slots, dtype=np.int64)
        self.gro_src = np.zeros(slots, dtype=np.int64)


class HotLoop:
    """Drop-in for weft.drivers.pyloop.Datapath: same start/stop/errors/observer, compiled loops.

    device_fd is the TUN/TAP, rx_fd the socket bound to the backend port, tx_fd the socket
    that sends (the raw IP socket for vxlan, the same UDP socket for udp), port the UDP port
    peers listen on. The fds stay owned by the caller (close them after stop()). offload=True
    when the device was opened in weft.dev.tundev's "offload" mode (IFF_VNET_HDR, TSO): the loops
    then split and coalesce super-frames, and every write into the device carries a
    virtio_net_hdr, the slow path's answers included.

    gso_fds: UDP sockets to send with UDP GSO (weft.drivers.pyloop.Transport.gso_sockets); used
    only if this kernel takes UDP_SEGMENT, else egress stays on tx_fd. gro=True turns UDP_GRO
    on for rx_fd at start(), if the kernel takes it. `udp_offloads` says what is in use.
    """

    def __init__(self, pipeline: Pipeline, device_fd: int, rx_fd: int, tx_fd: int, port: int,
                 *, batch: int | None = None, poll_ms: int = POLL_MS, offload: bool = False,
                 gso_fds: Sequence[int] = (), gro: bool = False,
                 observer: Callable[..., None] | None = None) -> None:
        if pipeline.kind not in KINDS:
            raise ValueError(f"no hot loop for backend {pipeline.kind!r}")
        self.pipeline = pipeline
        self.kind = KINDS[pipeline.kind]
        self.fd = device_fd
        self.rx_fd = rx_fd
        self.tx_fd = tx_fd
        self.port = port
        self.poll_ms = poll_ms
        self.offload = offload
        # Where IPv4 starts in a device packet: after Ethernet on the vxlan TAP, at 0 on the udp
        # TUN; -1 tells the loops the device has no virtio_net_hdr.
        self.l3_off = (14 if self.kind == KIND_VXLAN else 0) if offload else -1
        self.batch = batch or (OFFLOAD_BATCH if offload else BATCH)
        kernel = probe_udp_offloads() if (gso_fds or gro) else {}
        # What the kernel refused is said, not hidden: status shows it next to the mode.
        self.udp_offloads = {
            "gso": ("on" if kernel.get("udp_segment") else "refused by the kernel")
            if gso_fds else "off",
            "gro": ("on" if kernel.get("udp_gro") else "refused by the kernel")
            if gro else "off",
        }
        gso = np.array(list(gso_fds) if self.udp_offloads["gso"] == "on" else [],
                       dtype=np.int64)
        self.egress = _Side("egress", self.batch, offload)
        self.egress.gso_fds = gso
        self.ingress = _Side("ingress", self.batch, offload,
                             gro=self.udp_offloads["gro"] == "on")
        self._observer: Callable[..., None] | None = None
        self.observer = observer
        self.slow_write_errors = 0  # slow-path answers the device refused
        self.fatal: dict[str, int] = {}  # direction -> errno that ended its thread
        self.compile_seconds = 0.0
        os.set_blocking(device_fd, False)
        os.set_blocking(rx_fd, False)
        self.threads = [
            threading.Thread(target=self._run, args=(self.egress, EGRESS), name="weft-egress",
                             daemon=True),
            threading.Thread(target=self._run, args=(self.ingress, INGRESS),
                             name="weft-ingress", daemon=True),
        ]

    # Trace hook, observer(direction, batch, n), as on Datapath. Setting it makes both loops
    # come back after every batch; None lets them run free again. In offload mode the rows are
    # still ordinary packets: after split_super on egress, before coalesce on ingress.
    @property
    def observer(self) -> Callable[..., None] | None:
        return self._observer

    @observer.setter
    def observer(self, fn: Callable[..., None] | None) -> None:
        self._observer = fn
        for side in (self.egress, self.ingress):
            side.ctl[CTL_EACH_BATCH] = 1 if fn is not None else 0

    def compile(self) -> float:
        """Load (or compile) both loops for these argument types; returns seconds taken.

        Each loop is called once with its stop flag already set, which returns before any
        system call, so the first real packet does not wait for the compiler.
        """
        t0 = time.perf_counter()
        for side, direction in ((self.egress, EGRESS), (self.ingress, INGRESS)):
            ctl = side.ctl.copy()
            ctl[CTL_STOP] = 1
            self._call(side, direction, ctl)
        self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def start(self) -> None:
        self.compile()
        # GRO only once the loop that reads 64 KiB messages is sure to run: a loop with
        # row-sized buffers would get merged datagrams cut short.
        if self.ingress.gro_n and not enable_udp_gro(self.rx_fd):
            raise OSError(f"UDP_GRO refused on fd {self.rx_fd}")
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        for side in (self.egress, self.ingress):
            side.ctl[CTL_STOP] = 1
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=timeout)

    @property
    def errors(self) -> dict[str, int]:
        """Datapath's {"send", "write"} plus the hot loop's breakdown by kind."""
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
        return out

    def offload_drops(self) -> dict[str, int]:
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
        device_io is how many packets one super-frame carried on average.
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
    def _call(self, side: _Side, direction: int, ctl: np.ndarray) -> tuple[int, int, int]:
        p, b, t = self.pipeline, side.batch, self.pipeline.table
        if direction == EGRESS:
            return egress_loop(self.kind, self.fd, self.tx_fd, self.port, self.poll_ms, ctl,
                               side.stats, p.drops[EGRESS], b.bufs, b.lens, b.out_off,
                               b.out_len, b.verdict, b.reason, b.dst_ip, p.cfg, t.present,
                               t.public_ip, t.vtep_mac, p.counters, side.pollfd, side.msgs,
                               side.iovs, side.addrs, self.l3_off, side.sup, side.gso_fds,
                               side.ctrl, side.msg_fd)
        return ingress_loop(self.kind, self.rx_fd, self.fd, self.poll_ms, ctl, side.stats,
                            p.drops[INGRESS], b.bufs, b.lens, b.src_ip, b.out_off, b.out_len,
                            b.verdict, b.reason, b.dst_ip, p.cfg, t.present, t.public_ip,
                            t.sender_keys, p.counters, side.pollfd, side.msgs, side.iovs,
                            side.addrs, self.l3_off, side.out, side.out_lens, side.gro_n,
                            side.gro, side.gro_ctrl, side.gro_len, side.gro_seg, side.gro_src)

    def _run(self, side: _Side, direction: int) -> None:
        try:
            while True:
                code, n, err = self._call(side, direction, side.ctl)
                if code == RET_STOP:
                    return
                if code == RET_SLOW or (code == RET_ERROR and n and direction == EGRESS):
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
        except Exception:  # noqa: BLE001 - a datapath bug must be loud, not silent
            log.exception("hot loop thread %s died", side.name)

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
