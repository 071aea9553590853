"""The compiled loops: one numba function per direction that calls libc itself, without the GIL.

Each loop polls, reads a batch into the batch rows at HEADROOM, runs the pipeline's step
(weft.packet.pipeline_steps: the kernel of the encapsulation and the drop tally, the same call
Pipeline.egress/ingress make) and sends the FORWARD rows itself (sendmmsg on egress, write()
into the device on ingress). It loops over many batches and only comes back to its Python
thread (compiled_driver.HotLoop) when Python has work: a SLOW row for the scapy slow path, a
live-trace observer that wants every batch, a stop request, or an errno the loop cannot handle.

Each loop takes five argument groups (loop_args.py: LoopParams and its direction's IO scratch;
weft.packet.pipeline_steps: the batch, the peer table, the pipeline state), never loose arrays.
libc is reached through @intrinsic declarations (libc.py), so cache=True works and a
restarted daemon loads the machine code from __pycache__ instead of compiling for a minute
(weft/jitcache.py says when that code is stale). The codes, stats slots and counted system
calls both loops share are in loop_syscalls.py, the UDP GSO/GRO message handling in udpgso.py; the
buffer transforms of offload mode (no system calls) are weft.packet.offload's.

Offload mode (a device opened by weft.dev.tundev with IFF_VNET_HDR + TUNSETOFFLOAD): every device
read and write carries a 10-byte virtio_net_hdr. Egress reads each frame (up to a 64 KiB TSO
super-frame) into one buffer and offload.tso_split.split_super cuts it into ordinary packets
in the batch rows; ingress runs offload.gro_coalesce.coalesce over the FORWARD rows and writes
each resulting unit, so one write carries up to 64 segments of a TCP flow. With UDP_GRO on the
socket, offload.udp_gro.gro_split cuts the received messages into rows first. Everything
between (kernels, slow path, observer) still sees one ordinary packet per row.

Tunnel GSO (LoopParams.tnl_fd, a TX TAP from weft.dev.tundev.open_tunnel_tx): a TCP super-frame
is not split but handed whole to the kernel (weft.packet.offload.tunnel: the egress kernel decides
on its first segment), and a tunnel-GSO packet received whole is written to the device whole. With
an observer attached both are off, so it still sees every packet as a row.
"""

from __future__ import annotations

import errno

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - jitcache: the cache locator, before cache=True
from weft.drivers.libc import (
    EAGAIN,
    EBADF,
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
    write,
)
from weft.drivers.loop_syscalls import (
    CTL_EACH_BATCH,
    CTL_STOP,
    ONE,
    RET_BATCH,
    RET_ERROR,
    RET_SLOW,
    RET_STOP,
    ST_BATCHES,
    ST_COALESCE_FAILED,
    ST_DEVICE_IO,
    ST_GSO_REFUSED,
    ST_LAST_ERRNO,
    ST_MESSAGES,
    ST_PACKETS,
    ST_RETURNS,
    ST_SENT,
    ST_SYSCALLS,
    ST_TUNNEL_GSO,
    ST_TUNNEL_REFUSED,
    ST_TUNNEL_SENT,
    ST_TUNNEL_WRITTEN,
    count_error,
    count_split,
    is_hard,
    send_all,
    send_by_socket,
    wait_readable,
    write_one,
)
from weft.drivers.udpgso import GRO_CMSG, gro_size, gso_messages, row_messages
from weft.packet import pipeline_steps
from weft.packet.batch import HEADROOM
from weft.packet.encap import VXLAN
from weft.packet.offload.gro_coalesce import coalesce_into, unit_segments
from weft.packet.offload.tso import ERR_NO_ROOM
from weft.packet.offload.tso_split import split_super
from weft.packet.offload.tunnel import (
    INFO_SEGMENTS,
    count_received,
    count_sent,
    decap_super,
    decap_super_udp,
    encap_super,
    encap_super_udp,
    restore_read,
    restore_read_udp,
)
from weft.packet.offload.udp_gro import GRO_PAD, gro_split
from weft.packet.offload.vnet_hdr import GSO_TCPV4, VNET_GSO_TYPE
from weft.packet.reasons import Verdict
from weft.packet.table import CFG_MTU

_FORWARD = int(Verdict.FORWARD)
_VXLAN = VXLAN.code  # a module int: what numba reads of the row; tunnel GSO kernels by it
_SLOW = int(Verdict.SLOW)


# ---- egress: device -> peers --------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _send_whole(p, io, peers, state, got):
    """Hand the TCP super-frame read into io.sup to the TX TAP as one tunnel-GSO frame.

    Returns 1 when it was written (or dropped on a counted write error, as a full socket
    drops), 0 when it must be split as usual (encap_super declined it, or the kernel refused
    the write: tunnel GSO is then off for good), or -errno for an errno that ends the loop.
    """
    stats = io.stats
    if p.code == _VXLAN:
        t = encap_super(io.sup, got, io.probe, state.cfg, peers, state.counters, p.tnl_mac,
                        io.tnl_info)
    else:
        t = encap_super_udp(io.sup, got, io.probe, state.cfg, peers, state.counters, p.tnl_mac,
                            io.tnl_info)
    if t <= 0:
        return 0
    while True:
        stats[ST_SYSCALLS] += ONE
        w = write(p.tnl_fd, io.sup.ctypes.data, t)
        if w >= 0:
            count_sent(state.counters, p.egress_path, io.tnl_info)
            nseg = np.uint64(io.tnl_info[INFO_SEGMENTS])
            stats[ST_TUNNEL_SENT] += ONE
            stats[ST_PACKETS] += nseg
            stats[ST_SENT] += nseg
            return 1
        e = get_errno()
        if e == EINTR:
            continue
        if e == errno.EINVAL or e == EBADF or e == errno.EBADFD or e == errno.EFAULT:
            # This kernel (or a TX TAP gone) will not take it: split from now on.
            stats[ST_TUNNEL_REFUSED] += ONE
            stats[ST_LAST_ERRNO] = np.uint64(e)
            if p.code == _VXLAN:
                restore_read(io.sup)
            else:
                restore_read_udp(io.sup)
            return 0
        count_error(stats, e)
        return 1


@njit(cache=True, nogil=True)
def _fill_plain(p, io, b):
    """Plain device: one read per row until the rows are full or the device has no more;
    returns (rows read, errno that ended the reads or 0)."""
    stats = io.stats
    bufs = b.bufs
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    n = 0
    while n < rows:
        stats[ST_SYSCALLS] += ONE
        got = read(p.dev_fd, base + n * stride + HEADROOM, cap)
        if got <= 0:
            e = get_errno() if got < 0 else errno.ENODEV  # EOF: a TUN never reads 0 bytes
            if e == EINTR:
                continue
            return n, (e if e != EAGAIN else 0)
        stats[ST_DEVICE_IO] += ONE
        b.lens[n] = got
        n += 1
    return n, 0


@njit(cache=True, nogil=True)
def _fill_offload(p, io, b, peers, state, head, pending):
    """Offload device: read super-frames into io.sup[head:] and split each over the rows, or
    (tunnel GSO) hand a TCP super-frame whole to the TX TAP. `pending`: a frame already in
    io.sup that did not fit the last batch. Returns (rows filled, errno that ended the reads
    or 0, length of a frame left pending, frames handed whole, errno that ends the loop or 0).
    """
    stats = io.stats
    rows = b.bufs.shape[0]
    src = io.sup[head:]  # where a device read lands (after room for a tunnel frame's headers)
    sup_cap = src.shape[0]
    tunnel = p.tnl_fd >= 0
    n = 0
    err = 0
    whole = 0  # super-frames handed whole to the TX TAP in this batch
    while n < rows and whole < rows:
        if pending:
            got = pending
            pending = 0
        else:
            stats[ST_SYSCALLS] += ONE
            got = read(p.dev_fd, io.sup.ctypes.data + head, sup_cap)
            if got <= 0:
                e = get_errno() if got < 0 else errno.ENODEV  # EOF: a TUN never reads 0 bytes
                if e == EINTR:
                    continue
                if e != EAGAIN:
                    err = e
                break
            stats[ST_DEVICE_IO] += ONE
        if (tunnel and src[VNET_GSO_TYPE] == GSO_TCPV4 and stats[ST_TUNNEL_REFUSED] == 0
                and io.ctl[CTL_EACH_BATCH] == 0):
            # A TCP super-frame: the kernel can cut it as it leaves (tunnel GSO), unless the
            # egress kernel would not forward its first segment. The rows read before it leave
            # first, so a flow keeps its order.
            if n > 0:
                pending = got
                break
            w = _send_whole(p, io, peers, state, got)
            if w > 0:
                whole += 1
                continue
            if w < 0:
                return n, err, pending, whole, -w
        r = split_super(src, got, p.l3_off, b.bufs, b.lens, n)
        if r > 0:
            n += r
        elif r == ERR_NO_ROOM and n > 0:
            pending = got  # send what the rows hold, then split this frame from row 0
            break
        else:
            count_split(stats, r)
    return n, err, pending, whole, 0


@njit(cache=True, nogil=True)
def _send_rows(p, io, b, n):
    """Send the FORWARD rows among the first n: as UDP GSO messages while the kernel takes
    them, else one datagram per row on p.sock_fd. Returns an errno that ends the loop, or 0."""
    stats = io.stats
    if io.gso_fds.shape[0] > 0 and stats[ST_GSO_REFUSED] == 0:
        m = gso_messages(p.outer_len, n, b, p.port, io)
        return send_by_socket(io.msgs, io.msg_fd, m, io.pollfd, stats)
    m = row_messages(n, b, p.send_port, io)
    return send_all(p.sock_fd, io.msgs, 0, m, io.pollfd, stats)


@njit(cache=True, nogil=True)
def egress_loop(p, io, b, peers, state):
    """Read batches from the device, encapsulate, sendmmsg; returns (code, rows, errno).

    p: LoopParams (p.sock_fd sends), io: EgressIO, then the pipeline's BatchArrays, PeerArrays
    and PipelineState (weft.packet.pipeline_steps). Each batch is filled by its device's mode, run
    through the egress step and sent (_send_rows). p.l3_off < 0: a plain device, each read is
    one packet straight into a row (_fill_plain). p.l3_off >= 0 (14 for a TAP, 0 for a TUN):
    an offload device (_fill_offload); each read lands in io.sup (virtio_net_hdr + frame) and
    split_super spreads it over as many rows as it has segments. p.tnl_fd >= 0: a TCP
    super-frame goes whole to that TX TAP (_send_whole) after the rows read before it were
    sent; the read lands at io.sup[SUP_HEAD(_UDP):] so its headers can be put in front.
    io.gso_fds not empty: UDP sockets that take UDP_SEGMENT (see udpgso.gso_messages).
    """
    stats = io.stats
    rows = b.bufs.shape[0]
    offload = p.l3_off >= 0
    head = p.sup_head if offload else 0
    pending = 0  # length of a frame waiting in sup: it did not fit the rows the batch had left
    full = False  # the last batch filled every row: more is likely queued, skip poll()
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
        whole = 0
        if offload:
            n, err, pending, whole, fatal = _fill_offload(p, io, b, peers, state, head, pending)
            if fatal != 0:
                return RET_ERROR, 0, fatal
        else:
            n, err = _fill_plain(p, io, b)
        full = n == rows or pending > 0 or whole == rows
        if n == 0:
            if err != 0:
                return RET_ERROR, 0, err
            if rev & (POLLERR | POLLHUP):  # readable by error, nothing to read: detached
                return RET_ERROR, 0, EIO
            continue
        stats[ST_BATCHES] += ONE
        stats[ST_PACKETS] += np.uint64(n)
        _, slow = pipeline_steps.egress(p.code, n, b, peers, state)
        e = _send_rows(p, io, b, n)
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
def _write_whole(p, io, gi, peers, state):
    """Write GRO message gi, a tunnel-GSO packet received whole, to the TAP as one TSO frame.

    Returns 1 when handled (written, or dropped on a counted write error), 0 when it must be
    split as usual (offload.tunnel.decap_super declined it), or -errno that ends the loop.
    """
    stats = io.stats
    view = p.rx_view  # where the virtio header goes in the receive row
    if p.code == _VXLAN:
        t = decap_super(io.gro[gi, view:], io.gro_len[gi], io.gro_src[gi], io.probe, state.cfg,
                        peers, io.tnl_info)
    else:
        t = decap_super_udp(io.gro[gi, view:], io.gro_len[gi], io.gro_src[gi], io.probe,
                            state.cfg, peers, io.tnl_info)
    if t <= 0:
        return 0
    r = write_one(p.dev_fd, io.gro.ctypes.data + gi * io.gro.strides[0] + view, t, stats)
    if r < 0:
        return r
    count_received(state.counters, p.ingress_path, io.tnl_info)
    nseg = np.uint64(io.tnl_info[INFO_SEGMENTS])
    stats[ST_TUNNEL_GSO] += ONE
    stats[ST_TUNNEL_WRITTEN] += ONE
    stats[ST_PACKETS] += nseg
    if r:
        stats[ST_SENT] += nseg
    return 1


@njit(cache=True, nogil=True)
def _receive(p, io, b, slots, cap, gro_on):
    """One recvmmsg of up to `slots` messages, their lengths and senders noted: into the batch
    rows, or (UDP_GRO) into io.gro_len/gro_seg/gro_src. Returns (messages, errno that ends the
    loop or 0); 0 messages when there was nothing (or only a counted ICMP error) to take."""
    stats = io.stats
    msgs = io.msgs
    for i in range(slots):  # reset the value-result fields
        msgs[i, MH_NAMELEN] = SOCKADDR_IN_SIZE
        msgs[i, MH_CONTROLLEN] = GRO_CMSG if gro_on else 0
        msgs[i, MH_FLAGS] = 0
        msgs[i, MH_LEN] = 0
    stats[ST_SYSCALLS] += ONE
    got = recvmmsg(p.sock_fd, msgs.ctypes.data, slots, MSG_DONTWAIT, 0)
    if got < 0:
        e = get_errno()
        if e == EAGAIN or e == EINTR:
            return 0, 0
        if is_hard(e):
            return 0, e
        # A pending ICMP error on the socket (ECONNREFUSED and kin) is consumed by this call;
        # count it and go on receiving.
        count_error(stats, e)
        return 0, 0
    if got == 0:
        return 0, 0
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
    return got, 0


@njit(cache=True, nogil=True)
def _write_units(p, io, b, n):
    """Offload device: coalesce the FORWARD rows among the first n into units, one write()
    each. Returns an errno that ends the loop, or 0."""
    stats = io.stats
    units = coalesce_into(b.bufs, b.out_off, b.out_len, b.verdict, n, p.l3_off, io.out,
                          io.out_lens, io.units)
    if units < 0:
        # Cannot happen with `out` sized by new_units(rows); counted, not hidden.
        for i in range(n):
            if b.verdict[i] == _FORWARD:
                stats[ST_COALESCE_FAILED] += ONE
        units = 0
    out_base = io.out.ctypes.data
    out_stride = io.out.strides[0]
    for m in range(units):
        r = write_one(p.dev_fd, out_base + m * out_stride, io.out_lens[m], stats)
        if r < 0:
            return -r
        if r:
            stats[ST_SENT] += np.uint64(unit_segments(io.out[m], io.out_lens[m]))
    return 0


@njit(cache=True, nogil=True)
def _write_rows(p, io, b, n):
    """Plain device: one write() per FORWARD row among the first n. Returns an errno that ends
    the loop, or 0."""
    stats = io.stats
    base = b.bufs.ctypes.data
    stride = b.bufs.strides[0]
    for i in range(n):
        if b.verdict[i] != _FORWARD:
            continue
        r = write_one(p.dev_fd, base + i * stride + b.out_off[i], b.out_len[i], stats)
        if r < 0:
            return -r
        stats[ST_SENT] += np.uint64(r)
    return 0


@njit(cache=True, nogil=True)
def ingress_loop(p, io, b, peers, state):
    """recvmmsg batches, check/decapsulate, write the FORWARD rows; returns (code, rows, errno).

    p: LoopParams (p.sock_fd receives), io: IngressIO, then the pipeline's BatchArrays,
    PeerArrays and PipelineState. Each pass receives (_receive) unless GRO messages are left
    to split, runs the ingress step and writes to the device. p.l3_off < 0: a plain device,
    one write() per FORWARD row (_write_rows). p.l3_off >= 0: an offload device; coalesce
    turns the FORWARD rows into units in io.out (virtio_net_hdr + packet, consecutive segments
    of a TCP flow merged into one super-frame) and each unit is one write() (_write_units).
    p.gro_n > 0: the socket has UDP_GRO on, so one message can hold many datagrams of a flow;
    each recvmmsg takes gro_n of them into the 64 KiB rows of io.gro and gro_split cuts them
    into batch rows by the segment size of their UDP_GRO cmsg (a tunnel-GSO packet received
    whole may be written whole instead: _write_whole). Ingress kernels never say SLOW
    (nothing from a peer is answered), so only stop, observer and errors come back to Python.
    """
    stats = io.stats
    cap = b.bufs.shape[1] - HEADROOM
    gro_on = p.gro_n > 0
    whole_rx = gro_on and p.l3_off >= 0  # an offload device takes TSO writes
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
            got, e = _receive(p, io, b, slots, cap, gro_on)
            gi = 0
            gpos = 0
            if e != 0:
                return RET_ERROR, 0, e
            full = got == slots
            if got == 0:
                continue
        if gro_on:
            whole = whole_rx and io.ctl[CTL_EACH_BATCH] == 0
            if whole and gi < got and gpos == 0 and io.gro_seg[gi] > cap:
                # A tunnel-GSO packet received whole: one TSO write, if the ingress kernel
                # passes its first segment; else it is split below.
                w = _write_whole(p, io, gi, peers, state)
                if w < 0:
                    return RET_ERROR, 0, -w
                if w > 0:
                    gi += 1
                    continue
            n, gi, gpos, tunnels = gro_split(p.code, io, got, gi, gpos, b, cap,
                                             state.cfg[CFG_MTU], whole)
            stats[ST_TUNNEL_GSO] += np.uint64(tunnels)
        else:
            n = got
            got = 0
        stats[ST_BATCHES] += ONE
        stats[ST_PACKETS] += np.uint64(n)
        pipeline_steps.ingress(p.code, n, b, peers, state)
        if p.l3_off >= 0:
            e = _write_units(p, io, b, n)
        else:
            e = _write_rows(p, io, b, n)
        if e != 0:
            return RET_ERROR, n, e
        if io.ctl[CTL_EACH_BATCH]:
            stats[ST_RETURNS] += ONE
            return RET_BATCH, n, 0
