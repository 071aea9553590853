"""FakeDevice: a TUN/TAP as the drivers use one, without root."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

WAIT = 10.0  # seconds a read waits for the driver before the test fails instead of hanging
MAX_PACKET = 1 << 17  # a 64 KiB TSO super-frame and its virtio header fit


class FakeDevice:
    """A descriptor that reads and writes one packet per call, as a TUN/TAP does.

    An AF_UNIX datagram socketpair: the driver gets one end (`fileno()`, like the device
    tundev.open_device returns, so a test can hand it to the ladder too); the test plays the
    pods behind the device at the other end: `write` what they send, `read` what the driver
    wrote into the device. The kernel queues at most net.unix.max_dgram_qlen (10 by default)
    unread packets each way; write more only while the driver reads.
    """

    def __init__(self) -> None:
        self._driver_end, self._pods = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def fileno(self) -> int:
        return self._driver_end.fileno()

    def write(self, packets: Iterable[bytes]) -> None:
        """The pods send: each packet is one read for the driver."""
        for packet in packets:
            self._pods.send(packet)

    def read(self, count: int = 1, timeout: float = WAIT) -> list[bytes]:
        """The next `count` packets the driver wrote; TimeoutError if they do not all come."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the driver wrote {len(got)} of {count} packets into the "
                                   f"device within {timeout} s")
            self._pods.settimeout(left)
            try:
                got.append(self._pods.recv(MAX_PACKET))
            except TimeoutError:
                pass
        return got

    def unread(self) -> list[bytes]:
        """What the driver wrote that nobody read yet, without waiting."""
        out = []
        self._pods.setblocking(False)
        while True:
            try:
                out.append(self._pods.recv(MAX_PACKET))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self._driver_end.close()
        self._pods.close()

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
