"""The server side of the client-drawn avatar: the HTTP routes and a real WebRTC peer.

A pipeline of the fake LLM and voice with the real portrait handler (so a real rig and real
poses) behind the real app on 127.0.0.1, and the real aiortc test client (tests/rtc_client.py)
talking to a real ``PeerSession`` in client mode: no video track, the face as ``clock`` and
``face`` messages on the data channel.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from avatarchat.engine.pipeline import Pipeline
from avatarchat.handlers.avatar.portrait import POSE_NAMES, PortraitHandler, PortraitOptions
from avatarchat.server.app import STATE, create_app
from avatarchat.server.peer import PeerSession
from avatarchat.server.settings import ServerSettings
from avatarchat.testing import FakeLLM, FakeTTS, pipeline_of
from tests.rtc_client import RtcTestClient

JAW = POSE_NAMES.index("jaw")


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    portrait = PortraitHandler(PortraitOptions())
    portrait.load()
    return pipeline_of([FakeLLM(("Hello there, how are you today? I am fine.",)), FakeTTS(), portrait])


class Opened:
    """The app's peer factory: real ``PeerSession``s, recording what each was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.peers: list[PeerSession] = []

    async def open(self, pipeline: Any, sdp: str, type_: str, settings: ServerSettings,
                   **kwargs: Any) -> tuple[PeerSession, str]:
        self.asked.append(kwargs.get("avatar", "video"))
        peer, answer = await PeerSession.open(pipeline, sdp, type_, settings, **kwargs)
        self.peers.append(peer)
        return peer, answer


async def serve(pipeline: Pipeline, settings: ServerSettings, opened: Opened) -> AsyncIterator[str]:
    async def loader() -> Pipeline:
        return pipeline

    app = create_app(loader, settings, peer_factory=opened.open)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await app[STATE].wait_loaded()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        for peer in opened.peers:
            await peer.close("test over")
        await runner.cleanup()


@pytest.fixture
async def opened() -> Opened:
    return Opened()


@pytest.fixture
async def url(pipeline: Pipeline, opened: Opened) -> AsyncIterator[str]:
    async for u in serve(pipeline, ServerSettings(), opened):
        yield u


async def test_config_rig_and_image_tell_a_page_how_to_draw_the_avatar(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/config") as r:
            avatar = (await r.json())["avatar"]
        assert avatar == {"mode": "auto", "fps": 25, "rig": "api/avatar/rig", "image": "api/avatar/image.png"}
        async with http.get(f"{url}/{avatar['rig']}") as r:
            assert r.status == 200 and r.content_type == "application/json"
            rig = json.loads(await r.read())
            etag = r.headers["ETag"]
        assert rig["version"] == 1
        async with http.get(f"{url}/{avatar['rig']}", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        async with http.get(f"{url}/{avatar['image']}") as r:
            assert r.status == 200 and r.content_type == "image/png"
            assert (await r.read())[:8] == b"\x89PNG\r\n\x1a\n"


async def post_offer(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(url + "/api/offer", json=body) as r:
        return r.status, await r.json()


async def test_a_bad_avatar_field_is_refused_with_what_it_may_be(url: str, opened: Opened) -> None:
    status, body = await post_offer(url, {"sdp": "v=0", "type": "offer", "avatar": "hologram"})
    assert status == 400 and '"client"' in body["error"] and '"video"' in body["error"]
    assert opened.asked == []


async def connect(url: str, avatar: str) -> tuple[RtcTestClient, dict[str, Any]]:
    answers: list[dict[str, Any]] = []

    async def offer_fn(sdp: str, type_: str) -> str:
        status, body = await post_offer(url, {"sdp": sdp, "type": type_, "avatar": avatar})
        assert status == 200, body
        answers.append(body)
        return str(body["sdp"])

    client = RtcTestClient()
    await client.connect(offer_fn)
    return client, answers[0]


def video_section(sdp: str) -> str:
    return sdp[sdp.index("m=video"):] if "m=video" in sdp else ""


async def test_client_mode_sends_no_video_and_the_face_rows_open_the_mouth_for_a_reply(url: str) -> None:
    client, answer = await connect(url, "client")
    try:
        assert answer["avatar"] == "client"
        section = video_section(answer["sdp"])
        assert not section or "a=inactive" in section  # the page's video m-line gets nothing
        clock = await client.wait_message(lambda m: m["type"] == "clock", 20)
        assert clock["fps"] == 25 and clock["names"] == list(POSE_NAMES)
        await client.wait_message(lambda m: m["type"] == "face", 20)
        client.send({"type": "text", "text": "Hi!"})
        await client.wait_message(lambda m: m["type"] == "face" and any(r[JAW] > 0.15 for r in m["rows"]), 30)
        await client.wait_message(lambda m: m["type"] == "reply" and m["final"], 30)
        await asyncio.sleep(0.5)  # time for video, were any sent
        assert client.video_times == []
        assert len(client.loud_times()) > 10  # the reply's audio did come
    finally:
        await client.close()


async def test_video_mode_and_a_video_only_server(pipeline: Pipeline) -> None:
    opened = Opened()
    async for url in serve(pipeline, ServerSettings(avatar_mode="video"), opened):
        client, answer = await connect(url, "client")
        try:
            assert answer["avatar"] == "video" and opened.asked == ["video"]
            await client.wait_video(1, 20)
            assert not any(m["type"] == "face" for m in client.messages)
        finally:
            await client.close()


async def test_the_video_cap_refuses_one_more_video_session_but_not_a_page_that_draws(pipeline: Pipeline) -> None:
    opened = Opened()
    async for url in serve(pipeline, ServerSettings(max_video_sessions=1), opened):
        first, answer = await connect(url, "video")
        try:
            assert answer["avatar"] == "video"
            status, body = await post_offer(url, {"sdp": "v=0", "type": "offer", "avatar": "video"})
            assert status == 503 and "server.max_video_sessions" in body["error"]
            assert opened.asked == ["video"]  # refused before any negotiation
            drawer, answer = await connect(url, "client")
            await drawer.close()
            assert answer["avatar"] == "client"
        finally:
            await first.close()
