"""The compiled driver, HotLoop: two threads, each running one compiled loop (compiled_loops.py).

pyloop.py pays ~75 us of Python per traversal (select wake-up, os.readv, dispatching the
kernel, numpy bookkeeping, sendto). HotLoop instead hands each direction to an
@njit(nogil=True) loop that polls, reads, runs the pipeline's step and sends by itself, and
only returns when Python has work: HotLoop then runs the scapy slow path for the SLOW rows,
calls the live-trace observer, or handles the errno the loop stopped on, and calls the loop
again. It also builds the loops' argument groups, compiles (or loads) them before the first
packet, and reports their figures and UDP GSO/GRO state for `weft status`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numba import config as numba_config
from numba.core.errors import NumbaError

from weft.dev.tundev import TunnelTx
from weft.dev.udpopts import enable_udp_gro, probe_udp_offloads
from weft.drivers.compiled_loops import egress_loop, ingress_loop
from weft.drivers.driver import CompiledLoopUnavailable, Observer
from weft.drivers.jitmem import release_compiler_pages
from weft.drivers.loop_args import (
    EgressIO,
    IngressIO,
    LoopParams,
    gro_messages,
    loop_params,
    new_egress_io,
    new_ingress_io,
)
from weft.drivers.loop_syscalls import (
    CTL_EACH_BATCH,
    CTL_STOP,
    ERROR_SLOTS,
    HARD_ERRNOS,
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
    ST_TUNNEL_REFUSED,
    ST_TUNNEL_SENT,
    ST_TUNNEL_WRITTEN,
    ST_WAKEUPS,
)
from weft.packet.batch import HEADROOM, Batch
from weft.packet.offload.vnet_hdr import VNET_HDR_LEN
from weft.packet.pipeline import Pipeline
from weft.packet.pipeline_steps import batch_arrays
from weft.packet.reasons import Verdict

log = logging.getLogger(__name__)

BATCH = 64
# Offload mode: a 64 KiB TSO super-frame splits into ~45 MSS-sized rows, so a batch of 64 would
# hold one frame; 128 holds two or three and gives coalesce more segments to merge.
OFFLOAD_BATCH = 128
# How long a loop sleeps in poll() before it looks at the stop flag again: what stop() waits
# at most. Short, so that a SIGTERM ends the daemon in well under a second; an idle loop pays
# 50 poll() calls a second for it, which costs nothing measurable.
POLL_MS = 20
_SLOW = int(Verdict.SLOW)


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


def compile_loops() -> None:
    """Load (or compile) both loops, as HotLoop.compile does, without a device or sockets.

    Every mode and encapsulation runs the same two specializations (loop_args: a mode's unused
    arrays are placeholders of the same types), so one call each, with the stop flag set,
    fills the cache for all of them; weft.drivers.compile_job runs this ahead of the daemon.
    """
    from ipaddress import IPv4Network

    from weft.packet.encap import ENCAPS

    pipeline = Pipeline(next(iter(ENCAPS.values())), IPv4Network("10.0.0.0/16"), 24)
    params = loop_params(pipeline.encap, dev_fd=-1, sock_fd=-1, port=0, timeout_ms=0, l3_off=-1)
    for loop, io in ((egress_loop, new_egress_io(1, False, [])),
                     (ingress_loop, new_ingress_io(1, False, False))):
        io.ctl[CTL_STOP] = 1
        try:
            loop(params, io, batch_arrays(Batch(1)), pipeline.peers, pipeline.state)
        except NumbaError as exc:
            raise CompiledLoopUnavailable(f"numba cannot compile the compiled loops: {exc}") \
                from exc


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
    on for rx_fd at start(), if the kernel takes it. tunnel: the TX TAP of
    weft.dev.tundev.open_tunnel_tx (offload mode only): TCP super-frames then leave whole,
    as UDP-tunnel GSO frames the kernel cuts. offloads() says what is in use.

    Raises CompiledLoopUnavailable (from the constructor or start()) when numba cannot run the
    loops here; nothing else is caught.
    """

    def __init__(self, pipeline: Pipeline, device_fd: int, rx_fd: int, tx_fd: int, port: int,
                 *, batch: int | None = None, poll_ms: int = POLL_MS, offload: bool = False,
                 gso_fds: Sequence[int] = (), gro: bool = False,
                 tunnel: TunnelTx | None = None, observer: Observer | None = None) -> None:
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
        self.l3_off = pipeline.encap.inner_l3_offset if offload else -1
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
        # UDP-tunnel GSO: TCP super-frames go whole to a TX TAP and the kernel cuts them.
        self.tunnel = tunnel if (tunnel is not None and tunnel.fd >= 0 and offload) else None
        self.udp_offloads["tunnel_gso"] = (
            "on" if self.tunnel is not None else
            (tunnel.reason if tunnel is not None and tunnel.reason else "off"))
        params = loop_params(pipeline.encap, dev_fd=device_fd, sock_fd=tx_fd, port=port,
                             timeout_ms=poll_ms, l3_off=self.l3_off,
                             tnl_fd=self.tunnel.fd if self.tunnel else -1,
                             tnl_mac=self.tunnel.mac if self.tunnel else 0)
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
        params = loop_params(self.pipeline.encap, dev_fd=self.fd, sock_fd=self.rx_fd,
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
        release_compiler_pages()  # the loops are linked: LLVM's code is idle from here on

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
                **({"tunnel_gso": int(s[ST_TUNNEL_GSO]),
                    "tunnel_gso_whole": int(s[ST_TUNNEL_WRITTEN])} if side is self.ingress else
                   {"tunnel_frames": int(s[ST_TUNNEL_SENT])}),
            }
        return out

    def offloads(self) -> dict[str, str]:
        """UDP GSO / GRO for status: "on", "off", or why not (refused by kernel or at a send)."""
        out = dict(self.udp_offloads)
        if self.egress.stats[ST_GSO_REFUSED]:
            errno_ = int(self.egress.stats[ST_LAST_ERRNO])
            out["gso"] = f"refused at a send ({os.strerror(errno_)}): one datagram per packet"
        if self.egress.stats[ST_TUNNEL_REFUSED]:
            errno_ = int(self.egress.stats[ST_LAST_ERRNO])
            out["tunnel_gso"] = (f"refused at a write ({os.strerror(errno_)}): super-frames "
                                 f"are split")
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
