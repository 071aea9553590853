"""Live trace: the driver's observer that turns batch rows into per-packet events.

The hub is attached to the driver (weft.drivers.driver.Driver: PyLoop or HotLoop) only while
somebody subscribes (`weft trace --live` through the control socket): with no subscriber the
driver's `observer` is None and the data path pays one attribute check per batch. Each
subscriber has a filter and a bounded queue; rows matching no filter cost a header parse and
nothing else, and a full queue drops the event and counts it, so a reader that stops reading
never slows the data path.

Filter syntax (`weft trace --live --filter EXPR`), pcap-like and parsed strictly:

    expr    := term ("or" term)*
    term    := factor ("and" factor)*
    factor  := "not" factor | "(" expr ")" | primitive
    primitive := host IP | src IP | dst IP | peer IP | net CIDR
               | proto icmp|tcp|udp|arp | port N | verdict forward|drop|slow
               | dir egress|ingress | reason NAME

`host` matches the inner source or destination, `net` either address in the CIDR, `port` the
TCP/UDP source or destination port, `peer` the other host's PublicIP.
"""

from __future__ import annotations

import queue
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from weft.drivers.driver import Driver
from weft.packet.batch import HEADROOM, Batch
from weft.packet.encap import ENCAPS, UDP, Encap, as_encap
from weft.packet.headers import (
    ETH_HLEN,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_TYPE_AT,
    IPV4_HLEN,
    IPV4_PROTO_AT,
    IPV4_SRC_AT,
    L4_PORTS_LEN,
)
from weft.packet.outer import wrap_udp
from weft.packet.reasons import Reason, Verdict, reason_name
from weft.status import TraceStatus

PROTOS = {"icmp": 1, "tcp": 6, "udp": 17, "arp": -1}  # arp is no IP protocol: -1 marks it
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", -1: "arp"}
VERDICTS = {"forward": Verdict.FORWARD, "drop": Verdict.DROP, "slow": Verdict.SLOW}
DEFAULT_QUEUE = 1024  # events buffered per subscriber before they are dropped
STATS_EVERY = 1.0  # seconds between drop-count records while events are being dropped
IDLE_TICK = 0.5  # the control server notices a gone client this often


class FilterError(ValueError):
    """A --filter expression that does not parse; the message says where and what was expected."""


@dataclass(frozen=True)
class Key:
    """What filters look at, parsed from one row before any event is built."""

    direction: str
    verdict: int
    reason: int
    proto: int  # IP protocol, -1 for ARP, -2 for anything else
    src: int
    dst: int
    sport: int
    dport: int
    peer: int


Predicate = Callable[[Key], bool]

# ---- filter parsing -------------------------------------------------------------------------


def _ip(word: str) -> int:
    return int(IPv4Address(word))


def _primitive(keyword: str, arg: str) -> Predicate:
    if keyword in ("host", "src", "dst", "peer"):
        addr = _ip(arg)
        return {"host": lambda k: addr in (k.src, k.dst), "src": lambda k: k.src == addr,
                "dst": lambda k: k.dst == addr, "peer": lambda k: k.peer == addr}[keyword]
    if keyword == "net":
        net = IPv4Network(arg, strict=False)
        base, mask = int(net.network_address), int(net.netmask)
        return lambda k: k.src & mask == base or k.dst & mask == base
    if keyword == "proto":
        if arg not in PROTOS:
            raise ValueError(f"unknown protocol (one of {', '.join(PROTOS)})")
        number = PROTOS[arg]
        return lambda k: k.proto == number
    if keyword == "port":
        if not arg.isdigit() or not 0 <= int(arg) <= 65535:
            raise ValueError("a port is a number 0..65535")
        port = int(arg)
        return lambda k: k.proto in (6, 17) and port in (k.sport, k.dport)
    if keyword == "verdict":
        if arg not in VERDICTS:
            raise ValueError(f"unknown verdict (one of {', '.join(VERDICTS)})")
        code = int(VERDICTS[arg])
        return lambda k: k.verdict == code
    if keyword == "dir":
        if arg not in ("egress", "ingress"):
            raise ValueError("direction is egress or ingress")
        return lambda k: k.direction == arg
    if keyword == "reason":
        names = {r.name.lower(): int(r) for r in Reason}
        if arg not in names:
            raise ValueError(f"unknown reason (one of {', '.join(names)})")
        code = names[arg]
        return lambda k: k.reason == code
    raise KeyError(keyword)


KEYWORDS = ("host", "src", "dst", "peer", "net", "proto", "port", "verdict", "dir", "reason")
_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[int, str]] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:  # only trailing blanks are left
                break
            self.tokens.append((match.start(1), match.group(1)))
            pos = match.end()
        self.i = 0

    def fail(self, expected: str) -> FilterError:
        if self.i < len(self.tokens):
            col, word = self.tokens[self.i]
            found = f"{word!r} at column {col + 1}"
        else:
            found = "end of filter"
        return FilterError(f"filter {self.text!r}: expected {expected}, found {found}")

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self) -> str:
        word = self.tokens[self.i][1]
        self.i += 1
        return word

    def expr(self) -> Predicate:
        terms = [self.term()]
        while self.peek() == "or":
            self.take()
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else lambda k: any(t(k) for t in terms)

    def term(self) -> Predicate:
        factors = [self.factor()]
        while self.peek() == "and":
            self.take()
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else lambda k: all(f(k) for f in factors)

    def factor(self) -> Predicate:
        word = self.peek()
        if word == "not":
            self.take()
            inner = self.factor()
            return lambda k: not inner(k)
        if word == "(":
            self.take()
            inner = self.expr()
            if self.peek() != ")":
                raise self.fail("')'")
            self.take()
            return inner
        if word not in KEYWORDS:
            raise self.fail(f"one of {', '.join(KEYWORDS)}, 'not' or '('")
        self.take()
        if self.peek() in (None, "(", ")", "and", "or", "not"):
            raise self.fail(f"a value after {word!r}")
        col, arg = self.tokens[self.i]
        try:
            predicate = _primitive(word, arg)
        except ValueError as exc:
            raise FilterError(f"filter {self.text!r}: bad {word} {arg!r} at column {col + 1}: "
                              f"{exc}") from None
        self.take()
        return predicate


def parse_filter(text: str | None) -> Predicate:
    """Compile a filter expression; empty or None matches everything. FilterError if invalid."""
    if text is None or not text.strip():
        return lambda k: True
    parser = _Parser(text)
    predicate = parser.expr()
    if parser.peek() is not None:
        raise parser.fail("'and', 'or' or end of filter")
    return predicate


# ---- rows -> keys -> events -----------------------------------------------------------------


def _inner_offsets(encap: Encap, direction: str) -> tuple[int, bool]:
    """(offset of the inner packet in the row's input, whether it starts with Ethernet)."""
    # an ingress input is the UDP payload: it starts with the encapsulation header
    return (encap.header_len if direction == "ingress" else 0), encap.tap


def row_key(data: bytes, kind: Encap | str, direction: str, verdict: int, reason: int,
            peer: int) -> Key:
    """Parse the flow fields of one input packet; anything unparsable gets zeros."""
    off, ether = _inner_offsets(as_encap(kind), direction)
    proto, src, dst, sport, dport = -2, 0, 0, 0, 0
    ethertype = ETH_P_IP
    if ether:
        ethertype = (struct.unpack_from("!H", data, off + ETH_TYPE_AT)[0]
                     if len(data) >= off + ETH_HLEN else 0)
        off += ETH_HLEN
    if ethertype == ETH_P_ARP and len(data) >= off + 28:  # an IPv4 ARP body: 28 bytes
        proto = -1
        src, dst = struct.unpack_from("!I6xI", data, off + 14)  # sender and target address
    elif ethertype == ETH_P_IP and len(data) >= off + IPV4_HLEN and data[off] >> 4 == 4:
        proto = data[off + IPV4_PROTO_AT]
        src, dst = struct.unpack_from("!II", data, off + IPV4_SRC_AT)
        l4 = off + (data[off] & 0x0F) * 4
        if proto in (1, 6, 17) and len(data) >= l4 + L4_PORTS_LEN:
            if proto == 1:  # ICMP: type and code stand in for the ports, as in OVS flows
                sport, dport = data[l4], data[l4 + 1]
            else:
                sport, dport = struct.unpack_from("!HH", data, l4)
    return Key(direction, verdict, reason, proto, src, dst, sport, dport, peer)


def key_event(key: Key, when: float, length: int) -> dict:
    """The JSON event sent to a trace client."""
    return {
        "type": "event", "t": when, "dir": key.direction,
        "proto": PROTO_NAMES.get(key.proto, "other" if key.proto == -2 else str(key.proto)),
        "src": str(IPv4Address(key.src)), "dst": str(IPv4Address(key.dst)),
        "sport": key.sport, "dport": key.dport,
        "peer": str(IPv4Address(key.peer)) if key.peer else None,
        "verdict": Verdict(key.verdict).name.lower(), "reason": reason_name(key.reason),
        "len": length,
    }


# ---- hub and subscribers --------------------------------------------------------------------


class Subscription:
    def __init__(self, predicate: Predicate, want_bytes: bool, maxlen: int) -> None:
        self.predicate = predicate
        self.want_bytes = want_bytes
        self.queue: queue.Queue[dict] = queue.Queue(maxsize=max(1, maxlen))
        self.dropped = 0  # events lost because the queue was full
        self.delivered = 0  # events taken from the queue by the reader

    def offer(self, event: dict) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1


class TraceHub:
    """Fan-out of datapath batches to live-trace subscribers; attach it with `bind(driver)`."""

    def __init__(self, kind: Encap | str) -> None:
        self.encap = as_encap(kind)  # looked up once, passed to row_key per row
        self.kind = self.encap.backend
        self.info: dict = {"backend": self.kind}  # sent to clients first: what pcap writers need
        self._subs: tuple[Subscription, ...] = ()  # replaced whole, read lock-free per batch
        self._lock = threading.Lock()
        self._target: Driver | None = None  # the driver whose `observer` we set and clear
        self.dropped_total = 0

    def bind(self, driver: Driver, info: dict | None = None) -> None:
        with self._lock:
            self._target = driver
            self.info.update(info or {})
            driver.observer = self.observe if self._subs else None

    def subscribe(self, predicate: Predicate, want_bytes: bool = False,
                  maxlen: int = DEFAULT_QUEUE) -> Subscription:
        sub = Subscription(predicate, want_bytes, maxlen)
        with self._lock:
            self._subs = (*self._subs, sub)
            if self._target is not None:
                self._target.observer = self.observe
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub not in self._subs:
                return
            self._subs = tuple(s for s in self._subs if s is not sub)
            self.dropped_total += sub.dropped
            if self._target is not None and not self._subs:
                self._target.observer = None  # back to zero cost

    def stats(self) -> TraceStatus:
        subs = self._subs
        return TraceStatus(subscribers=len(subs),
                           dropped=self.dropped_total + sum(s.dropped for s in subs))

    def observe(self, direction: str, batch: Batch, n: int) -> None:
        """The driver's observer: runs on the data path thread, so it never blocks."""
        subs = self._subs
        if not subs:
            return
        when = time.time()
        ingress = direction == "ingress"
        bufs, lens, verdicts, reasons = batch.bufs, batch.lens, batch.verdict, batch.reason
        peers = batch.src_ip if ingress else batch.dst_ip
        for i in range(n):
            length = int(lens[i])
            data = bufs[i, HEADROOM:HEADROOM + min(length, 96)].tobytes()
            verdict = int(verdicts[i])
            # dst_ip is only meaningful for an egress FORWARD; elsewhere it is stale.
            peer = int(peers[i]) if ingress or verdict == Verdict.FORWARD else 0
            key = row_key(data, self.encap, direction, verdict, int(reasons[i]), peer)
            event = None
            for sub in subs:
                if not sub.predicate(key):
                    continue
                if event is None:
                    event = key_event(key, when, length)
                if sub.want_bytes:
                    sub.offer({**event, **_row_bytes(batch, i, verdict)})
                else:
                    sub.offer(event)

    def stream(self, args: dict) -> Iterator[dict | None]:
        """Control-socket handler body for `trace`: validate, then stream until closed.

        args: filter (str), count (int, 0 = unlimited), bytes (bool), queue (int).
        """
        predicate = parse_filter(args.get("filter"))  # FilterError -> an error reply
        count = int(args.get("count") or 0)
        maxlen = int(args.get("queue") or DEFAULT_QUEUE)
        return self._run(predicate, bool(args.get("bytes")), maxlen, count)

    def _run(self, predicate: Predicate, want_bytes: bool, maxlen: int,
             count: int) -> Iterator[dict | None]:
        # Subscribe inside the generator: a generator closed before its first step runs no
        # `finally`, and would leave the observer attached for good.
        sub = self.subscribe(predicate, want_bytes, maxlen)
        try:
            yield {"type": "hello", **self.info}
            reported, last = 0, time.monotonic()
            while not count or sub.delivered < count:
                try:
                    event = sub.queue.get(timeout=IDLE_TICK)
                except queue.Empty:
                    event = None
                if event is not None:
                    sub.delivered += 1
                yield event
                now = time.monotonic()
                if sub.dropped != reported and now - last >= STATS_EVERY:
                    reported, last = sub.dropped, now
                    yield {"type": "stats", "events": sub.delivered, "dropped": sub.dropped}
            self.unsubscribe(sub)  # detach before the last record: the client may stop here
            yield {"type": "end", "events": sub.delivered, "dropped": sub.dropped}
        finally:
            self.unsubscribe(sub)


def _row_bytes(batch: Batch, i: int, verdict: int) -> dict:
    """Input bytes of row i, and output bytes when it was forwarded (hex, for JSON)."""
    out = {"in": batch.bufs[i, HEADROOM:HEADROOM + int(batch.lens[i])].tobytes().hex()}
    if verdict == Verdict.FORWARD:
        out["out"] = batch.output(i).hex()
    return out


# ---- events -> pcap frames (client side, for `weft trace --live --write`) -------------------

_ZERO_ETH_IP = bytes(12) + b"\x08\x00"  # zero MACs, IPv4: for packets that have no Ethernet


def event_frames(event: dict, info: dict) -> list[bytes]:
    """The input and (when forwarded) output of an event carrying bytes, as Ethernet frames.

    `info` is the stream's hello record (backend, public_ip, port). Ingress inputs and udp
    egress outputs are socket payloads: their outer IPv4/UDP is rebuilt peer <-> PublicIP:port
    by `wrap_udp`, as `weft replay` writes them.
    """
    if "in" not in event:
        return []
    # the hello names the backend; one that names none is read as bare IP, as udp's
    encap = ENCAPS.get(str(info.get("backend")), UDP)
    local = int(IPv4Address(info.get("public_ip") or "0.0.0.0"))
    peer = int(IPv4Address(event.get("peer") or "0.0.0.0"))
    port = int(info.get("port") or 0)
    data_in = bytes.fromhex(event["in"])
    data_out = bytes.fromhex(event["out"]) if "out" in event else None
    if event["dir"] == "egress":
        frames = [data_in if encap.tap else _ZERO_ETH_IP + data_in]
        if data_out is not None:  # vxlan: outer IPv4 from the pipeline; udp: the inner packet
            outer = data_out if encap.builds_outer else wrap_udp(data_out, local, peer, port)
            frames.append(_ZERO_ETH_IP + outer)
    else:
        frames = [_ZERO_ETH_IP + wrap_udp(data_in, peer, local, port)]
        if data_out is not None:
            frames.append(data_out if encap.tap else _ZERO_ETH_IP + data_out)
    return frames
