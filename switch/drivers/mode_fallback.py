"""The datapath of an overlay backend: its TUN/TAP and the best driver that runs there.

Modes, best first (`--datapath auto` takes the best that works, a named one insists):
  offload  the compiled loop over a device opened with IFF_VNET_HDR + TSO: TCP crosses the
           device as 64 KiB super-frames, split into packets on egress, merged on ingress;
           the sockets use UDP GSO (one send per run of same-size packets to a peer) and UDP
           GRO (one receive per run of a peer's datagrams) where the kernel takes them
  fast     the compiled loop over a plain device, one device read/write per packet
  plain    the Python loop (pyloop.py), for when numba or libc cannot run the compiled one
The device mode is fixed when the device is opened (before the lease, so a refused offload is
known early); a compiled loop that then cannot run gets the device reopened plain. Only
CompiledLoopUnavailable (numba or libc cannot run the compiled loop here) moves down the
ladder: any other error is a bug and propagates.

First start of a version (the compile cache is cold, weft.drivers.compile_job): the compiled
loops are not waited for. A compile job (shared with every other process starting now) compiles
the pipeline's steps (~10 s), the Python loop serves the device from then on, and once the loops
are compiled too (~1 min on 2 cores) the driver is swapped for the best compiled mode: the
device is reopened with offloads if it had them, so packets in flight at that moment may be
dropped, once, as when the device is reopened after a repair.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from weft.dev.handover import Inherited, adopt_udp_socket
from weft.dev.tundev import OFFLOAD as DEVICE_OFFLOAD
from weft.dev.tundev import AdoptionRefused, TunnelTx, adopt_device, open_device, open_tunnel_tx
from weft.drivers import compile_job, modes
from weft.drivers.driver import CompiledLoopUnavailable, Driver
from weft.drivers.pyloop import PyLoop, Transport
from weft.packet.pipeline import Pipeline

log = logging.getLogger(__name__)


class DeviceDatapath:
    """A persistent TUN/TAP `name` and, once started, the driver that serves it.

    wanted: one of modes.CHOICES. The device is opened here (offload mode if the wanted mode
    allows it); start() opens the sockets and starts the driver, close() stops both and
    closes the device (which persists, so a restarted daemon reattaches).
    """

    def __init__(self, name: str, tap: bool, wanted: str = modes.AUTO,
                 inherited: Inherited | None = None) -> None:
        if wanted not in modes.CHOICES:
            raise ValueError(f"unknown datapath {wanted!r} "
                             f"(choose from {', '.join(modes.CHOICES)})")
        self.name = name
        self.tap = tap
        self.wanted = wanted
        self.mode = ""  # a rung of modes.LADDER once started
        self.refused: dict[str, str] = {}  # better modes that were tried and why they failed
        self.driver: Driver | None = None
        self.transport: Transport | None = None
        self.tunnel: TunnelTx | None = None  # the TX TAP for tunnel GSO (offload mode)
        self.pipeline: Pipeline | None = None
        # Told of every driver that replaces the one start() returned (the live trace rebinds).
        self.on_new_driver: Callable[[Driver], None] | None = None
        self.compiling: compile_job.CompileJob | None = None  # a cold start's compile job
        self.compile_note = ""  # how the data path got compiled, for status
        self._swap = threading.Lock()  # a driver swap (compiled at last, reopen) at a time
        self._closed = False
        # Loading the compiled loops from the cache takes ~0.5 s: begin now, while the daemon
        # talks to etcd, so that start() (a hand-over's gap, the first packet) does not wait.
        self._preload: threading.Thread | None = None
        if wanted != modes.PLAIN and compile_job.is_compiled(compile_job.LOOPS):
            self._preload = threading.Thread(target=_preload_loops, name="weft-preload",
                                             daemon=True)
            self._preload.start()
        may_offload = wanted in (modes.AUTO, modes.OFFLOAD)
        self.inherited = inherited or Inherited()  # descriptors a previous `weft run` passed
        self.adopted = self._adopt_device(may_offload)
        if not self.adopted:
            self.device, self.device_mode = open_device(name, tap, offload=may_offload)
        if may_offload and self.device_mode != DEVICE_OFFLOAD:
            if wanted == modes.OFFLOAD:
                self.device.close()
                raise RuntimeError(f"--datapath offload: device {name} refused it: "
                                   f"{self.device_mode.reason}")
            self.refused[modes.OFFLOAD] = self.device_mode.reason

    # -- hand-over (weft.dev.handover): the descriptors a successor adopts ------------------
    def _adopt_device(self, may_offload: bool) -> bool:
        fd = self.inherited.take(f"{self.name}-device")
        if fd is None:
            return False
        try:
            self.device, self.device_mode = adopt_device(fd, self.name, self.tap, may_offload)
            if self.wanted == modes.OFFLOAD and self.device_mode != DEVICE_OFFLOAD:
                self.device.close()  # insisting on offload: reopen it so (TUNSETIFF again)
                return False
        except AdoptionRefused as exc:
            os.close(fd)
            log.warning("not adopting the passed descriptor of %s: %s; opening it anew",
                        self.name, exc)
            return False
        log.info("adopted device %s (%s) from the previous weft run", self.name,
                 self.device_mode)
        return True

    def _adopt_socket(self, port: int) -> socket.socket | None:
        fd = self.inherited.take(f"{self.name}-udp")
        if fd is None:
            return None
        try:
            return adopt_udp_socket(fd, port)
        except (OSError, ValueError) as exc:
            log.warning("not adopting the passed UDP socket of %s: %s; binding anew",
                        self.name, exc)
            return None

    def carried_fds(self) -> dict[str, int]:
        """What a successor adopts: the device and the bound socket, whose queues hold what
        arrives while no process reads them."""
        fds = {f"{self.name}-device": self.device.fileno()}
        if self.transport is not None:
            fds[f"{self.name}-udp"] = self.transport.rx.fileno()
        return fds

    def detach(self) -> dict[str, int]:
        """Stop the driver (its threads finish their batch) and keep the device and socket
        open for exec(); returns carried_fds()."""
        self._closed = True
        if self.compiling is not None:
            self.compiling.stop()
        with self._swap:
            if self.driver is not None:
                self.driver.stop()
                self.driver = None
            if self.tunnel is not None:
                self.tunnel.close()
                self.tunnel = None
        return self.carried_fds()

    def start(self, pipeline: Pipeline, port: int) -> Driver:
        """Open the sockets on `port` and start the best driver; returns it."""
        self.pipeline = pipeline
        self.transport = Transport(pipeline.encap, port, rx=self._adopt_socket(port))
        if self.wanted != modes.PLAIN and not compile_job.is_compiled(compile_job.LOOPS):
            self.driver = self._start_while_compiling(pipeline, self.transport)
        else:
            self.driver = self._start_driver(pipeline, self.transport)
        log.info("datapath %s: %s", self.mode, modes.IO[self.mode])
        return self.driver

    def _start_while_compiling(self, pipeline: Pipeline, transport: Transport) -> Driver:
        """Serve the device with the Python loop while a compile job fills the cache, then
        move to the compiled loops (in a thread of its own); see the module's docstring."""
        log.info("compiling the data path for this version: first start only; the Python "
                 "loop carries pod traffic until it is ready")
        job = self.compiling = compile_job.CompileJob()
        if not job.wait(compile_job.STEPS):
            log.warning("%s; compiling in this process instead", job.error)
            return self._start_driver(pipeline, transport)
        offload_device = self.device_mode == DEVICE_OFFLOAD
        if offload_device:
            self._reopen_plain()  # the Python loop reads no virtio_net_hdr
        driver = PyLoop(pipeline, self.device.fileno(), transport)
        driver.start()
        self.mode = modes.PLAIN
        threading.Thread(target=self._move_to_compiled, args=(job, offload_device),
                         name="weft-compiled-swap", daemon=True).start()
        return driver

    def _move_to_compiled(self, job: compile_job.CompileJob, offload_device: bool) -> None:
        if not job.wait(compile_job.LOOPS):
            if not self._closed:
                self.refused[modes.FAST] = f"compiled loop unavailable: {job.error}"
                self.compile_note = f"failed: {job.error}"
                log.warning("%s; staying on the Python loop", job.error)
            return
        with self._swap:
            if self._closed or self.pipeline is None or self.transport is None:
                return
            old = self.driver
            assert old is not None
            old.stop()
            if offload_device:
                self.device.close()
                self.device, self.device_mode = open_device(self.name, self.tap, offload=True)
            self.driver = self._start_driver(self.pipeline, self.transport)
            self.compile_note = f"compiled in {job.seconds:.1f} s at this version's first start"
            log.info("data path compiled in %.1f s; datapath %s: %s", job.seconds or 0.0,
                     self.mode, modes.IO[self.mode])
        if self.on_new_driver is not None:
            self.on_new_driver(self.driver)

    def reopen(self) -> Driver:
        """Make the device again after it was deleted under us, and restart the driver on it.

        A deleted TUN/TAP is gone for good: the open fd no longer reaches any device and the
        driver's threads end on EBADFD. A new TUNSETIFF creates a fresh persistent device of
        the same name (new index, random MAC, no address: the caller sets those up); the
        sockets are unaffected and kept. The device is reopened in the mode it had.
        """
        assert self.pipeline is not None and self.transport is not None, "start() first"
        with self._swap:
            if self.driver is not None:
                self.driver.stop()
                self.driver = None
            self.device.close()
            self.device, self.device_mode = open_device(
                self.name, self.tap, offload=self.device_mode == DEVICE_OFFLOAD)
            if self.mode == modes.PLAIN and self.compiling is not None \
                    and self.compiling.running:
                driver: Driver = PyLoop(self.pipeline, self.device.fileno(), self.transport)
                driver.start()  # still compiling: the swap thread moves it on when ready
                self.driver = driver
            else:
                self.driver = self._start_driver(self.pipeline, self.transport)
            log.info("device %s reopened; datapath %s", self.name, self.mode)
            return self.driver

    def _start_driver(self, pipeline: Pipeline, transport: Transport) -> Driver:
        if self.device_mode == DEVICE_OFFLOAD:
            try:
                return self._compiled(pipeline, transport, modes.OFFLOAD)
            except CompiledLoopUnavailable as exc:
                if self.wanted == modes.OFFLOAD:
                    raise
                self.refused[modes.OFFLOAD] = f"compiled loop unavailable: {exc}"
                log.warning("offload datapath unavailable (%s); reopening %s without offloads",
                            exc, self.name)
                self._reopen_plain()
        if self.wanted in (modes.AUTO, modes.FAST):
            try:
                return self._compiled(pipeline, transport, modes.FAST)
            except CompiledLoopUnavailable as exc:
                if self.wanted == modes.FAST:
                    raise
                self.refused[modes.FAST] = f"compiled loop unavailable: {exc}"
                log.warning("compiled datapath unavailable (%s); using the Python loop", exc)
        driver = PyLoop(pipeline, self.device.fileno(), transport)
        driver.start()
        self.mode = modes.PLAIN
        return driver

    def _compiled(self, pipeline: Pipeline, transport: Transport, mode: str) -> Driver:
        if self._preload is not None:
            self._preload.join()
        from weft.drivers.compiled_driver import HotLoop  # numba and libc load only when wanted

        offload = mode == modes.OFFLOAD
        if offload and self.tunnel is None:
            self.tunnel = open_tunnel_tx(self.name)
            if self.tunnel.reason:
                log.info("tunnel GSO off: %s", self.tunnel.reason)
        # UDP GSO/GRO only with the offload device: that is where packets come in runs of one
        # flow (split super-frames) and where coalesce can use runs that arrive merged.
        loop = HotLoop(pipeline, self.device.fileno(), transport.rx.fileno(),
                       transport.tx.fileno(), transport.port, offload=offload, gro=offload,
                       gso_fds=transport.gso_sockets() if offload else (),
                       tunnel=self.tunnel if offload else None)
        loop.start()
        self.mode = mode
        return loop

    def _reopen_plain(self) -> None:
        """Swap the offload device for a plain one (the other loops read no virtio header).

        The persistent device keeps its index, MAC, address and routes across the reopen;
        open_device clears the TSO offloads so the kernel stops sending super-frames.
        """
        self.device.close()
        self.device, self.device_mode = open_device(self.name, self.tap, offload=False)

    def drops(self) -> dict[str, int]:
        return self.driver.drops() if self.driver else {}

    def status(self) -> dict:
        """The `weft status` datapath section."""
        driver = self.driver
        udp = driver.offloads() if driver else {}
        loop = driver.stats() if driver else {}
        return {"mode": self.mode,
                "batch": driver.batch if driver else PyLoop.batch,
                "io": modes.IO[self.mode], "device": str(self.device_mode),
                **({"refused": dict(self.refused)} if self.refused else {}),
                "udp_gso": udp.get("gso", "off"), "udp_gro": udp.get("gro", "off"),
                "tunnel_gso": udp.get("tunnel_gso", "off"),
                **({"compile": self._compile_status()} if self.compiling else {}),
                "errors": dict(driver.errors) if driver else {},
                **({"loop": loop} if loop else {})}

    def _compile_status(self) -> str:
        job = self.compiling
        assert job is not None
        if self.compile_note:
            return self.compile_note
        if job.running:
            return (f"in progress for {time.monotonic() - job.started:.0f} s: the Python loop "
                    f"carries traffic until the compiled loops are ready")
        return "done"

    def close(self) -> None:
        self._closed = True
        if self.compiling is not None:
            self.compiling.stop()
        with self._swap:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.driver is not None:
            self.driver.stop()
        if self.transport is not None:
            self.transport.close()
        if self.tunnel is not None:
            self.tunnel.close()
        # The device stays (persistent), as flannel leaves flannel.<VNI>: a restart reattaches.
        self.device.close()


def _preload_loops() -> None:
    """Load the compiled loops into this process (HotLoop then finds them loaded). A failure
    here is HotLoop's to report when it tries for itself."""
    try:
        from weft.drivers.compiled_driver import compile_loops

        compile_loops()
    except Exception as exc:  # noqa: BLE001 - a thread's boundary; HotLoop says it properly
        log.debug("preloading the compiled loops failed: %s", exc)
