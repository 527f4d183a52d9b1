"""Talk to `avatarchat serve` over its WebSocket: type a question, hear the reply.

    python examples/ws_client.py http://127.0.0.1:8282 "What is the capital of France?" [--token T]

Writes the reply's audio to reply.wav (16-bit mono PCM at the server's reply rate).
Needs only aiohttp. See docs/PROTOCOL.md for the messages.
"""

import argparse
import asyncio
import json
import wave

import aiohttp


async def main(url: str, question: str, token: str | None, out: str) -> None:
    params = {"video": "none", **({"token": token} if token else {})}
    pcm = bytearray()
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/api/ws", params=params) as ws:
        hello = await ws.receive_json()  # {"type": "hello", "sample_rate": ..., "reply_sample_rate": ...}
        await ws.send_json({"type": "text", "text": question})
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                pcm += msg.data  # the reply's voice, paced in real time
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            m = json.loads(msg.data)
            if m["type"] == "reply" and m["final"]:
                print("avatar:", m["text"])
            elif m["type"] == "error":
                print("error:", m["message"])
            elif m["type"] == "metrics":  # the reply has played to its end
                break
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(hello["reply_sample_rate"])
        f.writeframes(bytes(pcm))
    print(f"{len(pcm) / 2 / hello['reply_sample_rate']:.1f} s of reply audio in {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url"), p.add_argument("question"), p.add_argument("--token"), p.add_argument("--out", default="reply.wav")
    a = p.parse_args()
    asyncio.run(main(a.url.rstrip("/"), a.question, a.token, a.out))
