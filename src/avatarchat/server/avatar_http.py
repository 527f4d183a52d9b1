"""What a page needs to draw the avatar itself (``server.avatar_mode``): the rig document and
the portrait, served as ``GET /api/avatar/rig`` and ``GET /api/avatar/image.png``, and the
``avatar`` object of ``GET /api/config``. Built once from the loaded pipeline's avatar
handler (``AvatarHandler.client_assets``) and served from memory with an ETag, so a page
that reloads gets a 304."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from avatarchat.engine.handler import AvatarHandler
from avatarchat.server.settings import ServerSettings

RIG_PATH = "api/avatar/rig"
IMAGE_PATH = "api/avatar/image.png"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientAvatar:
    rig: bytes  # the rig document as UTF-8 JSON
    image: bytes  # PNG
    fps: int

    @staticmethod
    def of(pipeline: Any) -> ClientAvatar | None:
        """The loaded pipeline's avatar as a page draws it; None without an avatar stage, or
        with one a page cannot draw (it makes no poses)."""
        handlers = getattr(pipeline, "handlers", None) or []
        avatar = next((h for h in handlers if isinstance(h, AvatarHandler)), None)
        if avatar is None or not avatar.pose_names:
            return None
        assets = avatar.client_assets()
        if assets is None:
            return None
        rig = json.dumps(assets[0], separators=(",", ":"), allow_nan=False).encode()
        return ClientAvatar(rig, assets[1], avatar.fps)

    @staticmethod
    def loaded(pipeline: Any) -> ClientAvatar | None:
        """``of``, or None (logged) if the rig cannot be made: pages then get video, which is
        no reason to refuse to start."""
        try:
            return ClientAvatar.of(pipeline)
        except Exception:
            log.exception("the avatar's rig for pages could not be made; pages get video")
            return None

    def config(self, settings: ServerSettings) -> dict[str, Any]:
        """``/api/config``'s ``avatar``."""
        return {"mode": settings.avatar_mode, "fps": self.fps, "rig": RIG_PATH, "image": IMAGE_PATH}


def has_avatar(pipeline: Any) -> bool:
    """Whether the pipeline has an avatar stage (a session in video mode renders it)."""
    return any(isinstance(h, AvatarHandler) for h in getattr(pipeline, "handlers", None) or [])


def serve_bytes(request: web.Request, body: bytes, content_type: str) -> web.Response:
    """``body`` with a strong ETag; 304 when the page already has it."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, headers=headers)
