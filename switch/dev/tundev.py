"""TUN/TAP with the virtio-net header and TSO, with a plain fallback.

With IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4) the kernel hands a TCP flow to us as super-frames
of up to 64 KiB behind a 10-byte virtio_net_hdr (vnet_hdr.py), one read per ~45 packets instead
of one each: past ~0.3 Mpps the cost is system calls per packet, not the packet work. A kernel
or device that refuses either step gets the plain device (no header, MTU-sized frames) and the
reason, so the daemon always comes up.

The device is persistent, so a restarted daemon keeps its MAC and
routes. Linux re-reads IFF_VNET_HDR on every TUNSETIFF of an existing device, so a device made
in one mode reattaches in the other; but the offloads set by TUNSETOFFLOAD stay on the device
after its owner exits. A plain reopen therefore clears them (TUNSETOFFLOAD 0), or the kernel would
keep sending 64 KiB GSO frames to a reader that has no header to learn their segment size from.
Only a device of the wrong type (TUN where a TAP is wanted, or a multiqueue one) refuses the
reattach; that one is deleted and made again.

The compiled loop (switch/drivers/compiled_loops.py) does the reads and writes itself.
"""

from __future__ import annotations

import fcntl
import logging

import pytun

log = logging.getLogger(__name__)

TUNSETOFFLOAD = 0x400454D0
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4

OFFLOAD = "offload"
PLAIN = "plain"


class Mode(str):
    """"offload" or "plain", compared as a string; `.reason` says why plain was chosen."""

    reason: str

    def __new__(cls, value: str, reason: str = "") -> Mode:
        mode = super().__new__(cls, value)
        mode.reason = reason
        return mode


def _tun_kind(name: str) -> str | None:
    """The rtnetlink kind of an existing link ("tun" for TUN and TAP), None if absent."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        link = ipr.get_links(idx[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info is not None else ""


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def _attach(name: str, flags: int) -> pytun.TunTapDevice:
    """TUNSETIFF, replacing a leftover TUN/TAP of the wrong type (never another kind of link)."""
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as exc:
        if _tun_kind(name) != "tun":
            raise
        log.warning("device %s exists with other TUN/TAP flags (%s); recreating it", name, exc)
        _delete_link(name)
        return pytun.TunTapDevice(name=name, flags=flags)


def open_device(name: str, tap: bool, offload: bool = True,
                offloads: int = DEFAULT_OFFLOADS) -> tuple[pytun.TunTapDevice, Mode]:
    """Open (creating if needed) persistent TUN/TAP `name`; returns (device, mode).

    mode == "offload": every read and write carries a 10-byte virtio_net_hdr and reads may be
    TSO super-frames (up to 64 KiB + header; size the buffers for it). mode == "plain": no
    header, frames of at most the MTU; mode.reason says why offload was not used.
    """
    base = (pytun.IFF_TAP if tap else pytun.IFF_TUN) | pytun.IFF_NO_PI
    reason = "offload not requested"
    if offload:
        try:
            device = _attach(name, base | IFF_VNET_HDR)
        except (pytun.Error, OSError) as exc:
            reason = f"IFF_VNET_HDR refused: {exc}"
        else:
            try:
                fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, offloads)
            except OSError as exc:
                reason = f"TUNSETOFFLOAD {offloads:#x} refused: {exc.strerror}"
                device.close()
            else:
                device.persist(True)
                return device, Mode(OFFLOAD)
        log.warning("device %s: plain mode, %s", name, reason)
    device = _attach(name, base)
    try:
        # Clear offloads a previous offload-mode owner left on the persistent device.
        fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, 0)
    except OSError as exc:
        log.debug("device %s: clearing offloads failed: %s", name, exc)
    device.persist(True)
    return device, Mode(PLAIN, reason)
