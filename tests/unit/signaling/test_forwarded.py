"""X-Forwarded-For believed only from trusted proxies (signaling/forwarded.py)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from signaling.forwarded import client_address, forwarded_middleware, trusted_networks

NGINX = trusted_networks(["127.0.0.1", "10.1.0.0/16"])


@pytest.mark.parametrize(("remote", "header", "client"), [
    ("127.0.0.1", "203.0.113.9", "203.0.113.9"),  # nginx on this machine says whom it forwards for
    ("127.0.0.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the client's own claim (left) is not believed
    ("127.0.0.1", "203.0.113.9, 10.1.2.3", "203.0.113.9"),  # a second trusted proxy in the chain is skipped
    ("198.51.100.7", "127.0.0.1", "198.51.100.7"),  # not a trusted proxy: its header is ignored
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", "garbage", "127.0.0.1"),  # nothing readable: the proxy itself
    ("127.0.0.1", "203.0.113.9, junk", "127.0.0.1"),  # the walk stops at the first unreadable entry
    ("127.0.0.1", "2001:db8::9", "2001:db8::9"),
    ("127.0.0.1", "203.0.113.9" + ", 203.0.113.9" * 400, "127.0.0.1"),  # an absurd header is not read at all
])
def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy(remote: str, header: str | None,
                                                                          client: str) -> None:
    assert client_address(remote, header, NGINX) == client


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"


@pytest.mark.parametrize("entry", ["nginx", "10.0.0.0/33", "1.2.3"])
def test_a_bad_trusted_proxy_entry_is_refused_by_name(entry: str) -> None:
    with pytest.raises(ValueError, match=entry.replace(".", r"\.")):
        trusted_networks([entry])


async def test_the_middleware_hands_the_client_and_the_scheme_on() -> None:
    seen: dict[str, str | None] = {}

    async def handler(request: web.Request) -> web.Response:
        seen.update(remote=request.remote, scheme=request.scheme, secure=str(request.secure))
        return web.Response()

    middleware = forwarded_middleware(NGINX)
    request = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    request = request.clone(remote="127.0.0.1")
    await middleware(request, handler)
    assert seen == {"remote": "203.0.113.9", "scheme": "https", "secure": "True"}
    forged = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https"})
    await middleware(forged.clone(remote="198.51.100.7"), handler)
    assert seen == {"remote": "198.51.100.7", "scheme": "http", "secure": "False"}
