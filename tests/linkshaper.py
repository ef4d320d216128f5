"""A weak school link in user space: a UDP relay between one client (a browser's ICE socket) and a fixed target
(the server's media socket) that shapes each direction like a real bottleneck.

    client (browser) ──► [up: loss → queue → rate → delay] ──► target (server)
    client (browser) ◄── [down: loss → queue → rate → delay] ◄── target (server)

Per direction (`LinkShaper.up`, `LinkShaper.down`, each a `Direction`):

- random loss (`loss`, 0..1), drawn from a seeded RNG so that runs repeat;
- a rate limit (`rate_bps`, None: unlimited): a FIFO drained at that rate, each datagram counted with
  `overhead_bytes` (IPv4 + UDP headers, 28) as a link would; the queue is bounded (`queue_bytes`), so an
  overloaded link first queues (delay grows) and then drops at the tail, as a school's saturated ADSL line does;
- an added one-way delay (`delay_s`) after the bottleneck (propagation), keeping the order of datagrams.

Everything can be changed while running (`Direction.set(...)`): a test lowers the rate to 80 kbit/s and lifts it
later. Counters per direction: `passed`, `passed_bytes`, `lost` (random loss), `overflow` (queue full),
`queued_bytes` (now) and `max_queued_bytes`; `tap` sees every datagram entering a direction (for a test that
wants to tell what the link carries).

The shaper binds one socket on 127.0.0.1 and talks to the target from it: datagrams from the target go down to
the client, datagrams from anyone else go up. The first other address to send becomes the client; datagrams
from further addresses are counted (`strangers`) and dropped, since the target could not tell them apart.
`retarget()` points it at a new target (a rebuilt peer connection) and forgets the client.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

Address = tuple[str, int]

IPV4_UDP_OVERHEAD = 28
DEFAULT_QUEUE_BYTES = 32_000  # at 80 kbit/s: 3.2 s of queue (a bufferbloated school line); at 2 Mbit/s: 128 ms


@dataclass
class Direction:
    """One direction of the link: its settings (change them with `set`) and its counters."""

    name: str
    rate_bps: float | None = None
    loss: float = 0.0
    delay_s: float = 0.0
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    overhead_bytes: int = IPV4_UDP_OVERHEAD
    seed: int = 1
    # sees every datagram that enters this direction, before anything is done to it (a test's classifier)
    tap: Callable[[bytes], None] | None = field(default=None, repr=False)
    # counters
    passed: int = 0
    passed_bytes: int = 0
    lost: int = 0
    overflow: int = 0
    queued_bytes: int = 0
    max_queued_bytes: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _queue: deque = field(init=False, repr=False, default_factory=deque)
    _wake: asyncio.Event = field(init=False, repr=False, default_factory=asyncio.Event)
    _last_out: float = field(init=False, repr=False, default=0.0)
    stopped: bool = field(init=False, repr=False, default=False)  # set by LinkShaper.close

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def set(self, *, rate_bps: float | None | str = "keep", loss: float | None = None, delay_s: float | None = None,
            queue_bytes: int | None = None) -> None:
        """Change the link while it runs (`rate_bps=None` lifts the rate limit)."""
        if rate_bps != "keep":
            self.rate_bps = None if rate_bps is None else float(rate_bps)
        if loss is not None:
            self.loss = loss
        if delay_s is not None:
            self.delay_s = delay_s
        if queue_bytes is not None:
            self.queue_bytes = queue_bytes
        self._wake.set()  # the datagram being sent now finishes at the new rate

    @property
    def dropped(self) -> int:
        return self.lost + self.overflow

    def counters(self) -> dict:
        return {"passed": self.passed, "passed_bytes": self.passed_bytes, "lost": self.lost,
                "overflow": self.overflow, "dropped": self.dropped, "queued_bytes": self.queued_bytes,
                "max_queued_bytes": self.max_queued_bytes}

    # -- the pipeline -------------------------------------------------------------------------------------

    def offer(self, data: bytes, send: Callable[[bytes], None]) -> None:
        """A datagram enters this direction: lost, dropped at a full queue, or on its way."""
        if self.tap is not None:
            self.tap(data)
        if self.loss and self._rng.random() < self.loss:
            self.lost += 1
            return
        size = len(data) + self.overhead_bytes
        if self.rate_bps is None and not self._queue:
            self._deliver(data, send)
            return
        if self.queued_bytes + size > self.queue_bytes:
            self.overflow += 1
            return
        self._queue.append((data, send))
        self.queued_bytes += size
        self.max_queued_bytes = max(self.max_queued_bytes, self.queued_bytes)
        self._wake.set()

    async def run(self) -> None:
        """Drain the queue at the rate: the head datagram leaves when its bits have been 'sent'."""
        loop = asyncio.get_running_loop()
        free_at = loop.time()  # when the link finished sending the previous datagram
        # `stopped` ends the loop even if a cancellation is lost (Python 3.11's wait_for can swallow one that
        # arrives as the wait completes)
        while not self.stopped:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                free_at = max(free_at, loop.time())
                continue
            data, send = self._queue[0]
            bits = (len(data) + self.overhead_bytes) * 8.0
            # a backlogged link sends back to back from the previous departure, so timer lateness does not
            # lower the rate; a link that was idle starts now
            start = max(free_at, loop.time() - 0.002)
            while self.rate_bps is not None and bits > 0:
                rate = self.rate_bps
                done_at = start + bits / rate
                self._wake.clear()
                timeout = done_at - loop.time()
                if timeout > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except TimeoutError:
                        pass
                now = loop.time()
                if now >= done_at:
                    start = done_at
                    break
                # the settings changed mid-datagram: what is left goes at the new rate
                bits -= (now - start) * rate
                start = now
            else:
                start = loop.time()
            free_at = start
            self._queue.popleft()
            self.queued_bytes -= len(data) + self.overhead_bytes
            self._deliver(data, send)

    def _deliver(self, data: bytes, send: Callable[[bytes], None]) -> None:
        self.passed += 1
        self.passed_bytes += len(data)
        loop = asyncio.get_running_loop()
        # propagation delay, in order (a shorter delay set later does not overtake what is in flight)
        # (strictly later than the previous one: the event loop does not order timers of equal time)
        now = loop.time()
        at = max(now + self.delay_s, self._last_out + 1e-6)
        self._last_out = at
        if at <= now:
            send(data)
        else:
            loop.call_at(at, send, data)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, shaper: LinkShaper) -> None:
        self.shaper = shaper

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.shaper._received(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like: a link ignores it
        self.shaper.errors += 1


class LinkShaper:
    """A user-space weak link between one client and `target`; `await start()`, then send to `port`."""

    def __init__(self, target: Address | None = None, host: str = "127.0.0.1", seed: int = 1) -> None:
        self.target = target
        self.host = host
        self.port = 0
        self.client: Address | None = None
        self.up = Direction("up", seed=seed)
        self.down = Direction("down", seed=seed + 1)
        self.strangers = 0  # datagrams from a second client (dropped)
        self.errors = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> LinkShaper:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(self.host, 0))
        self.port = self._transport.get_extra_info("sockname")[1]
        self._tasks = [asyncio.ensure_future(d.run()) for d in (self.up, self.down)]
        return self

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def retarget(self, target: Address) -> None:
        """Relay to a new target from now on, and accept a new client (a rebuilt peer connection)."""
        self.target = target
        self.client = None

    def counters(self) -> dict:
        return {"up": self.up.counters(), "down": self.down.counters(), "strangers": self.strangers}

    def _received(self, data: bytes, addr: Address) -> None:
        addr = (addr[0], addr[1])
        if self.target is not None and addr == self.target:
            client = self.client
            if client is not None:
                self.down.offer(data, lambda d: self._send(d, client))
            return
        if self.client is None:
            self.client = addr
        elif addr != self.client:
            self.strangers += 1
            return
        target = self.target
        if target is not None:
            self.up.offer(data, lambda d: self._send(d, target))

    def _send(self, data: bytes, addr: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    async def close(self) -> None:
        for direction in (self.up, self.down):
            direction.stopped = True
            direction._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=2.0)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
