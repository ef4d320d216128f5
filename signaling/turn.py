"""Short-lived TURN credentials for the browsers (the "TURN REST API" scheme coturn implements).

coturn started with ``use-auth-secret`` and ``static-auth-secret=SECRET`` accepts, without any user
database, a username ``"<unix expiry>:<anything>"`` whose password is
``base64(HMAC-SHA1(SECRET, username))``, until the expiry. The server mints one such pair per participant
in its ``joined`` reply (``ice_servers``), so a classroom behind a firewall that lets only TCP out can
reach the lesson through the relay; the secret itself never leaves the server.

Pure: the clock is a parameter (``now``), as in ``tokens.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def turn_credential(secret: str, username: str) -> str:
    """coturn's password for `username`: base64(HMAC-SHA1(secret, username))."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def ice_servers_for(urls: tuple[str, ...] | list[str], secret: str, participant_id: str, ttl_s: float,
                    now: float | None = None) -> list[dict]:
    """The browser's `RTCConfiguration.iceServers` for one participant: one entry holding every TURN URL with
    a username valid until now + ttl_s. Empty when no TURN server (or no secret) is configured."""
    if not urls or not secret:
        return []
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{participant_id}"
    return [{"urls": list(urls), "username": username, "credential": turn_credential(secret, username)}]
