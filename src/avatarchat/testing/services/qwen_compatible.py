"""A local stand-in for Qwen through DashScope's OpenAI-compatible mode (Bailian).

What it speaks, from Alibaba Cloud Model Studio's public reference "OpenAI compatible -
Chat" (help.aliyun.com/zh/model-studio/compatibility-of-openai-with-dashscope and the
international edition alibabacloud.com/help/en/model-studio/compatibility-of-openai-with-dashscope):

- ``POST {base}/compatible-mode/v1/chat/completions`` with ``Authorization: Bearer <key>``;
  base ``https://dashscope.aliyuncs.com`` (mainland China) or
  ``https://dashscope-intl.aliyuncs.com`` (international).
- Body: ``model``, ``messages``, ``stream``, the sampling parameters, and DashScope's own
  top-level extras such as ``enable_thinking`` (Qwen3 models: must be false unless the
  caller reads the reasoning stream) and ``enable_search``.
- Streamed answer: Server-Sent Events of ``chat.completion.chunk`` objects (``choices[0].delta``
  with ``role`` on the first, ``content`` deltas, ``finish_reason`` "stop"/"length" on the
  last), then ``data: [DONE]``.
- Errors: an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``; a bad
  key is HTTP 401 with code ``invalid_api_key``, an unknown model 404 with
  ``model_not_found``.

It answers from a small table of replies (else a sentence naming the question), word by
word: the tests pin the request shape the handler sends and that the deltas stream; the
answer's quality is not what is tested here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from avatarchat.testing.services.base import GOOD_KEY, LocalService, ServiceCase

#: The models this stand-in knows (a few of Model Studio's Qwen models).
MODELS = ("qwen-flash", "qwen-turbo", "qwen-plus", "qwen-max", "qwen3-32b")

#: Replies to the questions the benches ask (English and Chinese); anything else gets a
#: sentence naming the question.
REPLIES: dict[str, str] = {
    "what is the capital of france": "The capital of France is Paris.",
    "can you recommend a good book": "Try The Little Prince, a short and gentle classic.",
    "how far away is the moon": "The moon is about 384,000 kilometres away.",
    "what should i cook for dinner tonight": "How about a simple vegetable stir fry?",
    "why is the sky blue": "Air scatters blue sunlight more than red, so the sky looks blue.",
    "tell me something about elephants": "Elephants are the largest land animals, and they never forget a friend.",
    "what is your favourite colour": "I like blue, the colour of a clear sky.",
    "how do i stay focused while working": "Work in short blocks and take a small break after each.",
    "what color is the sky": "The sky is blue on a clear day.",
    "中国的首都是哪里": "中国的首都是北京。",
    "法国的首都是哪里": "法国的首都是巴黎。",
    "你能推荐一本好书吗": "我推荐《小王子》，简单又温暖。",
    "月亮离地球有多远": "月亮离地球大约三十八万公里。",
    "我今天晚上应该做什么菜": "做一个番茄炒蛋吧，简单又好吃。",
    "天空为什么是蓝色的": "因为空气散射蓝光比红光多。",
    "给我讲一讲大象吧": "大象是陆地上最大的动物，记忆力很好。",
    "你最喜欢什么颜色": "我最喜欢蓝色。",
    "工作的时候怎么保持专注": "把工作分成小段，每段之后休息一下。",
}

#: Seconds between two streamed words (a fast hosted model: ~50 tokens/s).
WORD_S = 0.02


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return web.json_response(body, status=status)


def _reply_to(messages: list[dict[str, Any]]) -> str:
    question = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    key = "".join(c for c in str(question).lower() if c.isalnum() or c == " ").strip()
    if key in REPLIES:
        return REPLIES[key]
    chinese = any("\u4e00" <= c <= "\u9fff" for c in str(question))
    return f"你问的是：{question}" if chinese else f"You asked: {question}".strip()


def _tokens(text: str) -> list[str]:
    """The reply in streamed pieces: words, or two Han characters at a time."""
    if " " in text or not text:
        return [w if i == 0 else f" {w}" for i, w in enumerate(text.split(" "))]
    return [text[i:i + 2] for i in range(0, len(text), 2)]


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


def app(svc: LocalService) -> web.Application:
    """The compatible-mode chat endpoint, with ``svc``'s delay and faults."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await svc.arrive()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_parameter_error", "The request body is not valid JSON.")
        svc.record("http", request.path, request.headers, body)
        if request.headers.get("Authorization") != f"Bearer {GOOD_KEY}" or svc.fault == "reject_key":
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        if body.get("model") not in MODELS:
            return _error(404, "model_not_found", f"The model `{body.get('model')}` does not exist.")
        if svc.fault == "server_error":
            return _error(500, "internal_error", "An internal error has occured, please try again later.")
        await svc.first_byte()
        words = _tokens(_reply_to(body.get("messages") or []))
        cap = int(body.get("max_tokens") or 1000)
        cid, model = f"chatcmpl-{uuid.uuid4()}", str(body["model"])
        if not body.get("stream"):
            text = "".join(words[:cap])
            return web.json_response({"id": cid, "object": "chat.completion", "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "stop" if len(words) <= cap else "length"}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        out = svc.sender(response.write)
        out.send(_chunk(cid, model, {"role": "assistant", "content": ""}, None))
        for i, word in enumerate(words[:cap]):
            out.send(_chunk(cid, model, {"content": word}, None))
            if svc.fault == "drop_mid_stream" and i == 1:
                await out.drain()
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-answer
                return response
            await asyncio.sleep(WORD_S)
        out.send(_chunk(cid, model, {}, "stop" if len(words) <= cap else "length"))
        out.send(b"data: [DONE]\n\n")
        await out.drain()
        return response

    application = web.Application()
    application.router.add_post("/compatible-mode/v1/chat/completions", chat)
    return application


def bench_cases() -> list[ServiceCase]:
    """``bench services``: Qwen's first token through the compatible mode."""
    return [ServiceCase(
        name="qwen-compatible", stage="llm", handler="openai_compatible", server=app, measure="first_token",
        options=lambda svc: {"api_url": f"{svc.url}/compatible-mode/v1", "api_key": GOOD_KEY,
                             "model": "qwen-flash", "extra_body": {"enable_thinking": False}},
    )]
