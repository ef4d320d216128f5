"""The client's address behind a reverse proxy: `X-Forwarded-For` believed only from the proxies named in
`--trusted-proxies` (KETANG_TRUSTED_PROXIES), so the audit log, the login lockout and the rate limits see the
school's address rather than nginx's 127.0.0.1 — and a client cannot name itself someone else by sending the header.

The header is read from its right end (the address the nearest proxy saw) leftwards, skipping trusted proxies: the
first address that is not one of them is the client. A malformed entry stops the walk there (what lies left of it
cannot be trusted either)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HEADER_CHARS = 2048  # a longer X-Forwarded-For is not read at all (a chain of proxies is a handful of addresses)


def trusted_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """`127.0.0.1`, `10.0.0.0/8`, `::1`, ...; ValueError naming the entry that is not an address or network."""
    networks = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {entry!r}: give an IP address or network such as 10.0.0.0/8") from None
    return tuple(networks)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(remote: str | None, forwarded_for: str | None, networks: tuple[Network, ...]) -> str | None:
    """Who the client is: `remote` itself unless it is a trusted proxy that says whom it forwards for."""
    if not networks or remote is None or not forwarded_for or len(forwarded_for) > MAX_HEADER_CHARS:
        return remote
    if not _trusted(remote, networks):
        return remote
    client = remote
    for entry in reversed(forwarded_for.split(",")):
        address = entry.strip()
        try:
            ipaddress.ip_address(address)
        except ValueError:
            break
        client = address
        if not _trusted(address, networks):
            break
    return client


def forwarded_middleware(networks: tuple[Network, ...]):  # type: ignore[no-untyped-def]
    """The request's `remote` made the client's address (a no-op without trusted proxies); `X-Forwarded-Proto:
    https` from a trusted proxy makes the request count as secure (cookies then get their Secure flag)."""

    @web.middleware
    async def forwarded(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if not networks or request.remote is None or not _trusted(request.remote, networks):
            return await handler(request)
        remote = client_address(request.remote, request.headers.get("X-Forwarded-For"), networks)
        https = request.headers.get("X-Forwarded-Proto", "").strip().lower() == "https"
        return await handler(request.clone(remote=remote, scheme="https" if https else request.scheme))

    return forwarded
