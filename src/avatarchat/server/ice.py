"""Offer checks, ICE configuration, loopback candidates and codec choice for aiortc peers.

Used by the server (``PeerSession.open``) and by the Python test client, so both sides of a
loopback test negotiate the same way.

Loopback. aioice never gathers 127.0.0.1 (RFC 8445 forbids loopback host candidates), so on
a machine whose only interface is ``lo`` an aiortc peer offers no candidate and nothing
connects. ``gather_with_loopback`` gathers a peer connection's ICE transports before
``setLocalDescription`` (which then finds gathering complete and only writes the
candidates into the SDP) and, when asked, binds one more UDP socket on 127.0.0.1 per
transport and adds it as a host candidate. This reaches into aioice's ``Connection``
(``_connection``, ``_local_candidates``): there is no public API for extra local
candidates (aiortc/aioice issue #2). It touches only the connection passed in; nothing is
patched globally.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from aioice.ice import get_host_addresses
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcicetransport import RTCIceGatherer

from avatarchat.server.settings import ServerSettings
from avatarchat.server.turn import turn_server_entry

LOOPBACK = "127.0.0.1"
_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ ", re.MULTILINE)
_MLINE = re.compile(r"^m=(\w+) ", re.MULTILINE)


class OfferError(ValueError):
    """The client's offer cannot be answered; the message is safe to show the client."""


def ice_configuration(settings: ServerSettings, name: str = "avatarchat-server",
                      now: float | None = None) -> RTCConfiguration:
    """ICE servers from the config, for the server's own agent. An explicit empty list:
    given None, aiortc would add a public STUN server, and nothing may leave the machine
    unless the config says so.

    With ``server.turn`` set, its entry comes first with fresh REST credentials for ``name``
    (aiortc uses only the first TURN server it is given), so a server behind NAT offers a
    relayed candidate too. That costs one allocation per session (a round trip to the TURN
    server before the answer; up to aioice's 5 s gathering timeout if it does not answer).
    """
    entry = turn_server_entry(settings, name, now)
    servers = [] if entry is None else [RTCIceServer(**entry)]
    servers += [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                for s in settings.ice_servers]
    return RTCConfiguration(iceServers=servers)


def check_offer(sdp: str, type_: str) -> list[str]:
    """Refuse what is not an offer with a microphone; returns the m-line kinds in order."""
    if type_ != "offer":
        raise OfferError(f'expected an SDP of type "offer", got {str(type_)[:20]!r}')
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        raise OfferError("the offer is not an SDP session description (it must start with v=0)")
    kinds = _MLINE.findall(sdp)
    if "audio" not in kinds:
        raise OfferError("the offer has no audio: the page must send the microphone")
    return kinds


def candidate_addresses(sdp: str) -> list[str]:
    """The connection addresses of the ``a=candidate`` lines of an SDP."""
    return _CANDIDATE.findall(sdp)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # an mDNS name (xxx.local) or garbage


def wants_loopback(remote_sdp: str) -> bool:
    """Offer a loopback candidate when the remote peer offers one (a client on this
    machine) or when this machine has no other address to offer."""
    if any(is_loopback(a) for a in candidate_addresses(remote_sdp)):
        return True
    return not get_host_addresses(use_ipv4=True, use_ipv6=True)


def ice_gatherers(pc: RTCPeerConnection) -> list[RTCIceGatherer]:
    """The distinct ICE gatherers of ``pc``'s transceivers and data-channel transport."""
    found: dict[int, RTCIceGatherer] = {}
    dtls = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    for d in dtls:
        if d is not None:
            found.setdefault(id(d.transport.iceGatherer), d.transport.iceGatherer)
    return list(found.values())


async def gather_with_loopback(pc: RTCPeerConnection, loopback: bool) -> None:
    """Gather every ICE transport of ``pc`` now, adding a 127.0.0.1 host candidate to each
    if ``loopback``. Call after the transports exist (server: after setRemoteDescription;
    client: after adding tracks and channels) and before ``setLocalDescription``."""
    for gatherer in ice_gatherers(pc):
        await gatherer.gather()
        if not loopback:
            continue
        conn: Any = gatherer._connection  # aioice.Connection; see the module docstring
        if any(c.host == LOOPBACK for c in conn.local_candidates):
            continue
        # Binds the socket and registers its protocol, so connectivity checks pair it.
        extra = await conn.get_component_candidates(component=1, addresses=[LOOPBACK])
        conn._local_candidates.extend(extra)


def prefer_video_codec(transceiver: RTCRtpTransceiver, codec: str) -> None:
    """Order the video codecs so ``codec`` ("vp8" or "h264") wins when the offer has it and
    the other still works when it does not. On an answerer this must run before
    ``setRemoteDescription``: that is where aiortc intersects the codecs."""
    mime = {"vp8": "video/VP8", "h264": "video/H264"}[codec]
    codecs = RTCRtpSender.getCapabilities("video").codecs
    first = [c for c in codecs if c.mimeType == mime]
    rest = [c for c in codecs if c.mimeType != mime and c.mimeType != "video/rtx"]
    rtx = [c for c in codecs if c.mimeType == "video/rtx"]
    transceiver.setCodecPreferences(first + rest + rtx)


def negotiated_codec(sdp: str, kind: str) -> str | None:
    """The codec name of the first payload type of the first ``kind`` m-line of ``sdp``."""
    lines = sdp.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"m={kind} "):
            fields = line.split()
            if len(fields) < 4:
                return None
            pt = fields[3]
            for later in lines[i + 1:]:
                if later.startswith("m="):
                    break
                if later.startswith(f"a=rtpmap:{pt} "):
                    return later.split()[1].split("/")[0]
            return None
    return None
