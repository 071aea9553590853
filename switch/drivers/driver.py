"""What every IO driver offers the backend and `weft status`: the Driver interface.

A driver moves packets between one TUN/TAP and the backend's sockets through a Pipeline, on
its own threads. Two implement it: weft.drivers.pyloop.PyLoop (Python, select + readv/sendto)
and weft.drivers.compiled_driver.HotLoop (numba, libc without the GIL).
weft.drivers.mode_fallback picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# observer(direction, batch, n): called after each batch while set (the live trace hook)
Observer = Callable[..., None]


class CompiledLoopUnavailable(RuntimeError):
    """numba or libc cannot run the compiled loop here; a slower driver may do instead.

    Raised only for that cause (numba missing or disabled, a compile error, a libc without the
    calls); any other exception from a driver is a bug and propagates.
    """


class Driver(Protocol):
    batch: int  # rows per batch
    observer: Observer | None  # settable: the trace hub sets it while someone traces

    def start(self) -> None:
        """Start the threads (after any compiling, so the first packet does not wait)."""

    def stop(self) -> None:
        """Stop and join the threads; afterwards every counter is final and consistent."""

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-direction loop figures ({} when the driver keeps none)."""

    def offloads(self) -> dict[str, str]:
        """UDP GSO / GRO: {"gso": ..., "gro": ...}, each "on", "off" or why not."""

    @property
    def errors(self) -> dict[str, int]:
        """Send and device-write failures ({"send", "write"} at least), by kind."""

    def drops(self) -> dict[str, int]:
        """Packets the driver dropped before the pipeline saw them, by name ({} if none)."""
