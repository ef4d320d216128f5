"""The pre-class network check (signaling/probe.py): `probe` (with a lesson token; no join needed), the page's
`probe_answer` and its `probe_report`."""

from __future__ import annotations

from signaling.connection import Connection
from signaling.handlers.common import Reply
from signaling.hub import Hub
from signaling.messages import Message, ProtocolError
from signaling.probe import ProbeRefused, probes_of
from signaling.tokens import LESSON_ROLES, TokenError, verify_token
from signaling.turn import ice_servers_for


async def handle_probe(hub: Hub, conn: Connection, msg: Message) -> Reply:
    try:
        claims = verify_token(hub.config.secret, msg.fields["token"])
    except TokenError as exc:
        raise ProtocolError(exc.code, str(exc), msg.id) from exc
    if claims.role not in LESSON_ROLES:
        raise ProtocolError("forbidden", f"a {claims.role} token is for the library, not for lessons", msg.id)
    cfg = hub.config  # the ICE servers a join would get: the probe takes the lesson's way (TURN included)
    ice = ice_servers_for(cfg.turn_urls, cfg.turn_secret, claims.sub, cfg.turn_ttl_s)
    try:
        sdp = await probes_of(hub).start(conn, claims.sub, conn.send, lambda: conn.closed, list(cfg.ice_servers))
    except ProbeRefused as exc:
        raise ProtocolError(exc.code, exc.message, msg.id) from exc
    return {"type": "probe_offer", "ref": msg.id, "sdp": sdp, "ice_servers": ice}


async def handle_probe_answer(hub: Hub, conn: Connection, msg: Message) -> Reply:
    try:
        await probes_of(hub).of(conn).accept_answer(msg.fields["sdp"])
    except ProbeRefused as exc:
        raise ProtocolError(exc.code, exc.message, msg.id) from exc
    return None


async def handle_probe_report(hub: Hub, conn: Connection, msg: Message) -> Reply:
    try:
        probes_of(hub).of(conn).report(msg.fields["steps"])
    except ProbeRefused as exc:
        raise ProtocolError(exc.code, exc.message, msg.id) from exc
    return None
