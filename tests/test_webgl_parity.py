"""The browser's avatar renderer (web/avatar/gl.js, rig.js) against the Python one.

A real aiohttp server on 127.0.0.1 serves tests/webgl/parity.html, the web/avatar modules,
the built-in avatar's rig document and its portrait; headless Debian Chromium (WebGL2 on
SwiftShader) draws parameter sets and reads the canvas back; ``PortraitRenderer.render``
draws the same sets. Mean absolute difference per channel, on the 0..255 scale, measured
here (whole frame / face region / mouth box):

    neutral        0      / 0      / 0        (the portrait, exactly)
    jaw            0.144  / 0.418  / 1.52
    round_jaw      0.064  / 0.186  / 1.06
    smile_stretch  0.051  / 0.148  / 0.92
    blink          0.058  / 0.169  / 0.04
    pose_brows     0.123  / 0.358  / 0.79

The rest is where the Python renderer approximates: its fixed-point inverse away from the
lips (the lid skin of a blink), OpenCV's pixel ownership at the mouth triangles' edges.
Bounds (about 3x the largest measured): whole frame <= WHOLE_BOUND, face region <=
FACE_BOUND, mouth box <= MOUTH_BOUND for every set; the pixels outside the face region are
byte-identical. An open mouth differs from neutral by far more
than the bounds, so the comparison can fail. rig.js's points match FaceRig.deformed to
0.01 px. Set AVATARCHAT_PARITY_DIR to keep side-by-side PNGs (browser | Python | 4x diff).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import web

from avatarchat.avatar.asset import AvatarAssetError, load_avatar
from avatarchat.avatar.params import FaceParams
from avatarchat.avatar.render import PortraitRenderer
from avatarchat.avatar.rig_export import portrait_png, rig_document
from avatarchat.bench.harness import CHROMIUM, chromium_args

pytestmark = pytest.mark.slow

WEB_AVATAR = Path(__file__).resolve().parents[1] / "src" / "avatarchat" / "web" / "avatar"
PAGE = Path(__file__).resolve().parent / "webgl" / "parity.html"
WHOLE_BOUND = 0.5
FACE_BOUND = 1.25
MOUTH_BOUND = 5.0
SETS: dict[str, FaceParams] = {
    "neutral": FaceParams(),
    "jaw": FaceParams(jaw=0.8),
    "round_jaw": FaceParams(jaw=0.5, round=0.8),
    "smile_stretch": FaceParams(smile=0.9, stretch=0.6, jaw=0.25, upper=0.4),
    "blink": FaceParams(blink=1.0),
    "pose_brows": FaceParams(yaw=2.5, roll=-1.8, pitch=1.5, brows=0.7, breath=0.6, blink=0.7, jaw=0.3),
}


@pytest.fixture(scope="module")
def renderer() -> PortraitRenderer:
    try:
        return PortraitRenderer(load_avatar("default"))
    except AvatarAssetError as exc:
        pytest.skip(f"built-in avatar 'default' is missing ({exc})")


def _app(renderer: PortraitRenderer) -> web.Application:
    doc = rig_document(renderer)
    png = portrait_png(renderer)

    async def page(_: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGE)

    async def rig(_: web.Request) -> web.StreamResponse:
        return web.json_response(doc)

    async def image(_: web.Request) -> web.StreamResponse:
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/rig", rig)
    app.router.add_get("/image.png", image)
    app.router.add_static("/avatar/", WEB_AVATAR)
    return app


@pytest.fixture
async def page(renderer: PortraitRenderer) -> AsyncIterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing")
    playwright_api = pytest.importorskip("playwright.async_api")
    runner = web.AppRunner(_app(renderer))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=chromium_args(fake_ui=False))
            try:
                pg = await browser.new_page()
                await pg.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
                await pg.wait_for_function("() => window.parity !== undefined", timeout=60_000)
                error = await pg.evaluate("() => window.parity.error || null")
                assert error is None, f"the page could not start the renderer: {error}"
                yield pg
            finally:
                await browser.close()
    finally:
        await runner.cleanup()


async def _browser_frame(page: Any, params: FaceParams, size: int) -> np.ndarray:
    b64 = await page.evaluate("p => window.parity.frame(p)", params.as_dict())
    rgba = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(size, size, 4)
    return rgba[..., :3].copy()


def _save(name: str, gl: np.ndarray, py: np.ndarray) -> None:
    folder = os.environ.get("AVATARCHAT_PARITY_DIR")
    if not folder:
        return
    diff = np.clip(np.abs(gl.astype(int) - py.astype(int)) * 4, 0, 255).astype(np.uint8)
    side = np.concatenate([gl, py, diff], axis=1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(Path(folder) / f"{name}.png"), cv2.cvtColor(side, cv2.COLOR_RGB2BGR))


def _mouth_box(renderer: PortraitRenderer) -> tuple[slice, slice]:
    """The lips and the room below them the lower lip travels into."""
    lips = renderer.asset.landmarks[renderer.asset.groups["lips_outer"]]
    (x0, y0), (x1, y1) = lips.min(axis=0).astype(int) - 6, lips.max(axis=0).astype(int) + [6, 30]
    return slice(y0, y1), slice(x0, x1)


async def test_browser_frames_match_the_python_renderer(page: Any, renderer: PortraitRenderer) -> None:
    x0, y0, x1, y1 = renderer.x0, renderer.y0, renderer.x1, renderer.y1
    mouth = _mouth_box(renderer)
    outside = np.ones((renderer.size, renderer.size), bool)
    outside[y0:y1, x0:x1] = False
    figures: dict[str, tuple[float, float, float]] = {}
    frames: dict[str, np.ndarray] = {}
    for name, params in SETS.items():
        gl = await _browser_frame(page, params, renderer.size)
        py = renderer.render(params)
        _save(name, gl, py)
        diff = np.abs(gl.astype(np.int16) - py.astype(np.int16))
        figures[name] = (float(diff.mean()), float(diff[y0:y1, x0:x1].mean()), float(diff[mouth].mean()))
        assert not diff[outside].any(), f"{name}: pixels outside the face region changed"
        frames[name] = gl
    print("mean |browser - python| /255 (whole, face region, mouth):",
          {k: tuple(round(v, 3) for v in f) for k, f in figures.items()})
    for name, (whole, face, lips) in figures.items():
        assert whole <= WHOLE_BOUND and face <= FACE_BOUND and lips <= MOUTH_BOUND, (name, whole, face, lips)
    assert figures["neutral"] == (0.0, 0.0, 0.0)  # at rest the portrait, exactly
    # A frame repaints what the one before it painted: back at rest, nothing is left over.
    again = await _browser_frame(page, SETS["neutral"], renderer.size)
    assert np.array_equal(again, renderer.image)
    # The bounds are tight enough to tell an open mouth from a closed one.
    opened = np.abs(frames["jaw"].astype(np.int16) - frames["neutral"].astype(np.int16))
    assert opened[y0:y1, x0:x1].mean() > 3 * FACE_BOUND and opened[mouth].mean() > 3 * MOUTH_BOUND, (
        opened[y0:y1, x0:x1].mean(), opened[mouth].mean())


async def test_rig_js_points_blob_portrait_and_no_webgl(page: Any, renderer: PortraitRenderer) -> None:
    """rig.js puts the points where FaceRig.deformed does (params by name or as an array);
    the portrait given as a Blob draws the same frame as its URL; without WebGL2 create()
    rejects with a message the page can show. Prints draw() time in SwiftShader (no bound:
    the machine is shared)."""
    for params in [*SETS.values(), FaceParams(jaw=4.0, yaw=-30.0, round=float("nan"), breath=2.0)]:
        got = np.array(await page.evaluate("p => window.parity.points(p)", params.as_dict())).reshape(-1, 2)
        assert np.abs(got - renderer.rig.deformed(params)).max() < 0.01, params
    # An array in PARAM_NAMES order is the same as the object.
    params = SETS["pose_brows"]
    by_array = await page.evaluate("p => window.parity.points(p)", list(params.as_dict().values()))
    by_name = await page.evaluate("p => window.parity.points(p)", params.as_dict())
    assert by_array == by_name

    for name in ("neutral", "jaw", "pose_brows"):
        ms = await page.evaluate("([p, n]) => window.parity.drawMs(p, n)", [SETS[name].as_dict(), 30])
        print(f"draw {name}: {ms:.2f} ms (SwiftShader, incl. a 1-pixel read-back)")
    message = await page.evaluate("() => window.parity.noWebGL()")
    assert message is not None and "WebGL2 is not available" in message
    assert await page.evaluate("p => window.parity.sameFromBlob(p)", SETS["jaw"].as_dict())
