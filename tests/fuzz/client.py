"""Real aiortc clients for the fuzz tests, posting their offers to the real app over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from avatarchat.server.ice import gather_with_loopback
from tests.rtc_client import RtcTestClient, ScriptedMic, strip_non_loopback


def http_offer_fn(port: int) -> Any:
    """``offer_fn`` for ``RtcTestClient.connect``: ``POST /api/offer`` on the app."""

    async def offer_fn(sdp: str, type_: str) -> str:
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{port}/api/offer", json={"sdp": sdp, "type": type_}) as r:
            body = await r.json(content_type=None)
            assert r.status == 200, (r.status, body)
            return str(body["sdp"])

    return offer_fn


async def connect(port: int) -> RtcTestClient:
    """A fresh client with its data channel open (the caller closes it)."""
    client = RtcTestClient()
    try:
        await client.connect(http_offer_fn(port))
    except BaseException:
        await client.close()
        raise
    return client


async def real_offer() -> str:
    """The offer a real client makes (mic, video, ``events`` channel; loopback candidates)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    mic = ScriptedMic()
    try:
        pc.addTrack(mic)
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("events")
        offer = await pc.createOffer()
        await gather_with_loopback(pc, loopback=True)
        await pc.setLocalDescription(offer)
        return strip_non_loopback(pc.localDescription.sdp)
    finally:
        mic.stop()
        await pc.close()


def send_any(client: RtcTestClient, kind: str, payload: str | bytes) -> None:
    """Send as a hostile client may: any size (the answer's max-message-size is ignored),
    and ``raw-text`` frames, string frames whose bytes are not UTF-8. Both reach into this
    client's own aiortc transport (aiortc's send() refuses them); nothing else is touched."""
    from aiortc.rtcsctptransport import WEBRTC_STRING

    channel = client._channel
    sctp = client.pc.sctp
    sctp._remote_max_message_size = 0  # 0: the remote takes any size
    if kind == "raw-text":
        assert isinstance(payload, bytes) and payload
        channel._addBufferedAmount(len(payload))
        sctp._data_channel_queue.append((channel, WEBRTC_STRING, payload))
        asyncio.ensure_future(sctp._data_channel_flush())
    else:
        channel.send(payload)
