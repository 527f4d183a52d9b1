"""``avatarchat talk``: the whole pipeline offline on recorded speech or typed text.

Each ``--input`` file (any format, rate and channel count) or ``--text`` is one user turn,
in the order given, with history carried over. Each file is taken as one utterance, so the
VAD is not asked to cut it (``serve`` uses the VAD on the live microphone).

Each reply is written as ``turn-N.wav``; with an avatar stage in the config (and no
``--no-avatar``) also as ``turn-N.mp4`` (H.264 + AAC, the frames and the audio on the reply's
one clock) and ``turn-N.png``, a contact sheet of frames sampled across the reply. The
conversation is the engine's ``Conversation``, as in ``serve``; its reply sink writes files
(``cli.talk_sink``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarchat.audio.io import atomic_write, load_audio
from avatarchat.cli.errors import UserError
from avatarchat.cli.progress import say as _say
from avatarchat.config import load_config
from avatarchat.cli.talk_sink import FileSink, SavedReply
from avatarchat.engine.conversation import Conversation, ConversationListener
from avatarchat.engine.events import Event, ReplyEnd, SpeechEnded, TimingMark, TurnCancelled, now
from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.turn import TurnResult

#: A turn that has not ended by then is reported as failed.
TURN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TurnInput:
    kind: str  # "audio" or "text"
    value: str
    audio: np.ndarray | None = None


class _Ordered(argparse.Action):
    """Keeps --input and --text in the order given: they are the conversation's turns."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any,
                 option: str | None = None) -> None:
        turns = getattr(ns, "turns", None) or []
        turns.append(("audio" if option in ("--input", "-i") else "text", value))
        ns.turns = turns


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("talk", help="run the pipeline offline on recorded speech or text",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", "-i", action=_Ordered, metavar="AUDIO", help="a recorded question (repeatable)")
    p.add_argument("--text", "-t", action=_Ordered, metavar="TEXT", help="a typed question, skips ASR (repeatable)")
    p.add_argument("--out", "-o", required=True, type=Path, help="folder for the replies and transcript.json")
    p.add_argument("--config", "-c", help="YAML config (default: the embedded offline stack)")
    p.add_argument("--no-avatar", action="store_true", help="leave the avatar stage out: audio replies only")
    p.set_defaults(run=run, turns=None)


def run(args: argparse.Namespace) -> int:

    if not args.turns:
        raise UserError("talk needs at least one --input AUDIO or --text TEXT")
    config = load_config(args.config)
    if args.no_avatar:
        config = dataclasses.replace(config, stages={k: v for k, v in config.stages.items() if k != "avatar"})
    # Read every input before any model loads: a bad file fails in a second, not after loading.
    # An audio file is read by its path as given; its name is kept as typed, for the transcript.
    turns = [TurnInput(k, argument_text(v), load_audio(v) if k == "audio" else None) for k, v in args.turns]
    if any(t.kind == "text" and not t.value.strip() for t in turns):
        raise UserError("--text is empty")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out} exists and is not a folder")
    results = asyncio.run(_talk(config, turns, args.out))
    return 1 if any(r["error"] for r in results) else 0


async def _talk(config: Any, turns: list[TurnInput], out: Path) -> list[dict[str, Any]]:
    pipeline = await Pipeline.load(config, progress=_say)
    out.mkdir(parents=True, exist_ok=True)
    sink = FileSink(out, _fps(config))
    results: dict[int, TurnResult] = {}
    ended: dict[int, asyncio.Future[None]] = {}

    def on_event(event: Event) -> None:
        result = results.get(event.turn)
        if result is None:
            return  # the fallback line of a failed turn, or another turn's
        result.add(event)
        if isinstance(event, ReplyEnd | TurnCancelled) and not ended[event.turn].done():
            ended[event.turn].set_result(None)

    conversation = Conversation(pipeline, sink, ConversationListener(event=on_event), session_id="talk")
    await conversation.start()
    records = []
    try:
        for i, item in enumerate(turns, 1):
            _say(f"turn {i}/{len(turns)}: {item.value if item.kind == 'text' else Path(item.value).name} …")
            turn = _ask(conversation, item)
            results[turn], ended[turn] = TurnResult(turn), asyncio.get_running_loop().create_future()
            sink.expect(turn, f"turn-{i}")
            async with asyncio.timeout(TURN_TIMEOUT_S):
                await ended[turn]
                saved = await sink.saved(turn)
            result = results[turn]
            records.append(_record(i, item, result, saved))
            _say(f"  you:    {result.user_text!r}")
            _say(f"  avatar: {result.reply_text!r}" + (f"  ERROR: {'; '.join(result.errors)}" if result.errors else ""))
    finally:
        await conversation.close()
    transcript = {"config": config.path, "turns": records}
    # UTF-8 whatever the locale, Chinese as characters, not \u escapes (a path the locale could
    # not decode stays escaped rather than failing the write).
    text = json.dumps(transcript, indent=2, ensure_ascii=False)
    atomic_write(out / "transcript.json", lambda f: f.write(text.encode("utf-8", "backslashreplace")))
    _say(f"wrote {len(records)} turn(s) to {out}/ (transcript.json)")
    return records


def argument_text(value: str) -> str:
    """A command-line argument as the user typed it.

    Python decodes arguments with the locale's encoding. Under a C or POSIX locale without
    UTF-8 mode (``PYTHONUTF8=0``, or ``LC_ALL=C`` with ``PYTHONCOERCECLOCALE=0``) it is ASCII,
    and the bytes of ``你好`` arrive as lone surrogates that no model can read and no UTF-8
    file can hold: they are the UTF-8 a terminal sent, so they are decoded as such. Raises
    ``UserError`` when those bytes are not UTF-8 either."""
    if not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    raw = os.fsencode(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"an argument is neither UTF-8 nor in the locale's encoding: {raw!r}") from None


def _ask(conversation: Conversation, item: TurnInput) -> int:
    """Start the turn of one input; a recorded file is one utterance, so it skips the VAD."""
    if item.kind == "text":
        return conversation.say(item.value)
    session = conversation.session
    turn = session.new_turn()
    t = now()
    session.push(TimingMark(turn, "speech_end", t))
    session.push(SpeechEnded(turn, item.audio, speech_end=t))  # type: ignore[arg-type]
    return turn


def _fps(config: Any) -> int:
    avatar = config.stages.get("avatar")
    return int(getattr(avatar.options, "fps", 25)) if avatar is not None else 25


def _record(index: int, item: TurnInput, result: TurnResult, saved: SavedReply) -> dict[str, Any]:
    return {
        "turn": index,
        "input": {"audio": item.value} if item.kind == "audio" else {"text": item.value},
        "user": result.user_text,
        "reply": result.reply_text,
        "audio": saved.audio,
        "audio_seconds": saved.audio_seconds,
        "video": saved.video,
        "frames": saved.frames,
        "timings_ms": result.timings_ms(),
        "error": "; ".join(result.errors) or (f"turn {result.cancelled}" if result.cancelled else None),
    }
