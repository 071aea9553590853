"""Pcap reading (scapy's raw readers, pcap and pcapng) and a tiny deterministic pcap writer.

Reading goes through scapy's `RawPcapReader`, which also opens pcapng, and never dissects.
Writing is done here rather than with scapy's `PcapWriter`: that one writes the file header
only with the first packet (an empty output would be a zero-byte, unreadable file) and uses
the host's byte order; ours always writes a little-endian classic pcap header, so the same
records give the same bytes on every machine.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, the portable link type
# a device's link (weft.packet.encap.Encap.device_link) -> the link type its packets are saved as
LINKTYPE_OF_LINK = {"ether": LINKTYPE_ETHERNET, "ip": LINKTYPE_RAW}
# DLT_RAW is 12 on most systems and 14 on OpenBSD; LINKTYPE_IPV4 (228) is IPv4 only.
RAW_IP_LINKTYPES = frozenset({12, 14, LINKTYPE_RAW, 228})
# libpcap keeps the FCS-length flags in the upper bits of the link-type field
# (LT_LINKTYPE masks with 0x03FFFFFF); a capture with odd upper bits is still that link type.
LINKTYPE_MASK = 0x03FFFFFF
SNAPLEN = 262144
_MAGIC_USEC = 0xA1B2C3D4
_MAGIC_NSEC = 0xA1B23C4D


class CaptureError(Exception):
    """The file is not a capture we can open at all."""


@dataclass(frozen=True)
class Record:
    """One captured packet: the captured bytes, its link type and timestamp."""

    index: int
    data: bytes
    linktype: int
    sec: int
    frac: int  # microseconds, or nanoseconds when the capture is nanosecond-resolution
    wirelen: int

    @property
    def truncated(self) -> bool:
        """Cut short by the snap length: the packet on the wire was longer."""
        return len(self.data) < self.wirelen


class Capture:
    """An open capture file; iterate it for Records. `error` says why reading stopped early."""

    def __init__(self, path: str | Path) -> None:
        from scapy.error import Scapy_Exception
        from scapy.utils import RawPcapNgReader, RawPcapReader

        self.path = str(path)
        self.error: str | None = None
        try:
            self._reader = RawPcapReader(self.path)
        except (Scapy_Exception, EOFError, struct.error) as exc:
            raise CaptureError(f"{path}: not a pcap or pcapng capture ({exc})") from None
        except OSError as exc:
            raise CaptureError(f"{path}: {exc.strerror or exc}") from None
        self.ng = isinstance(self._reader, RawPcapNgReader)
        self.nano = bool(getattr(self._reader, "nano", False))
        self.linktype = int(getattr(self._reader, "linktype", LINKTYPE_ETHERNET)) & LINKTYPE_MASK

    def __iter__(self) -> Iterator[Record]:
        index = 0
        while True:
            try:
                item = next(self._reader)
            except StopIteration:
                return
            except Exception as exc:  # a corrupt record ends the file, not the program
                self.error = f"record {index}: {type(exc).__name__}: {exc}"
                return
            data, meta = item
            yield self._record(index, bytes(data), meta)
            index += 1

    def _record(self, index: int, data: bytes, meta) -> Record:
        if self.ng:
            ticks = (int(meta.tshigh) << 32) | int(meta.tslow)
            resol = int(meta.tsresol) or 1_000_000
            sec, rest = divmod(ticks, resol)
            frac = rest * 1_000_000 // resol  # pcapng is written back out in microseconds
            linktype = int(meta.linktype) & LINKTYPE_MASK
        else:
            sec, frac, linktype = int(meta.sec), int(meta.usec), self.linktype
        return Record(index, data, linktype, sec, frac, int(meta.wirelen))

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | Path) -> list[Record]:
    """Every record of a capture (small files: tests and goldens)."""
    with Capture(path) as capture:
        records = list(capture)
    if capture.error:
        print(f"warning: {path}: {capture.error}", file=sys.stderr)
    return records


class PcapOut:
    """A classic little-endian pcap file; the header is written at once, even with no packets."""

    def __init__(self, path: str | Path, linktype: int, nano: bool = False) -> None:
        self.path = str(path)
        self.linktype = linktype
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        magic = _MAGIC_NSEC if nano else _MAGIC_USEC
        self._f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, SNAPLEN, linktype))
        self.count = 0

    def write(self, data: bytes, sec: int, frac: int, wirelen: int | None = None) -> None:
        caplen = min(len(data), SNAPLEN)
        self._f.write(struct.pack("<IIII", sec & 0xFFFFFFFF, frac, caplen,
                                  len(data) if wirelen is None else wirelen))
        self._f.write(data[:caplen])
        self.count += 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> PcapOut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
