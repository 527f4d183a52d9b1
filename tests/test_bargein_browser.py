"""Barge-in in real headless Chromium against a real `avatarchat serve` (real models).

The fake microphone speaks over the avatar's reply: first a cough, which the page's own
gate (web/bargein.js) mutes for its grace time and the server lets go on, then a question,
which the page silences at once and the server cuts. The gate's logic is also run in the
page on synthetic signals in virtual time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatarchat.audio.io import load_audio, write_wav
from tests.browser import (
    AUDIBLE,
    CONNECTED,
    FAKE_MIC_RATE,
    SAMPLES,
    ServeProcess,
    close_pages,
    launch_chromium,
    log_lines,
    open_page,
    wait_for,
)

pytestmark = pytest.mark.slow

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: these tests are synchronous, and playwright's sync
    API keeps its own event loop running in this thread, where pytest-asyncio cannot run one."""


def cough(seconds: float = 0.11, peak: float = 0.5) -> np.ndarray:
    """A short burst of dull noise, fast attack and ~50 ms decay: loud enough for the page's
    gate, too short and too unlike speech for the server's VAD (Silero scores it ~0.02)."""
    n = int(seconds * FAKE_MIC_RATE)
    k = np.arange(n)
    envelope = np.minimum(1.0, k / (0.008 * FAKE_MIC_RATE)) * np.exp(-k / (0.05 * FAKE_MIC_RATE))
    noise = np.convolve(np.random.default_rng(3).standard_normal(n), np.ones(18) / 18, "same") * envelope
    return (peak * noise / np.abs(noise).max()).astype(np.float32)


def barge_in_wav(path: Path, cough_after_s: float = 5.0, question_after_s: float = 1.9) -> Path:
    """The fake mic: 3 s of silence, a spoken request for a long story (hibari TTS), then,
    while the avatar tells it, a cough ``cough_after_s`` later and "What is the capital of
    France?" ``question_after_s`` after the cough, then a long silence (Chromium loops the
    file). The story's reply starts ~1.2 s after the request on an idle machine (~4 s on a
    very busy one) and speaks ~10 s: both sounds fall inside it."""
    from avatarchat.audio.resample import resample
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

    tts = HibariTTS(HibariOptions())
    tts.load()
    story, _ = tts.synthesize("Tell me a long story about a dragon.")
    story = resample(story, tts.sample_rate, FAKE_MIC_RATE)
    question = load_audio(SAMPLES / "question.wav", FAKE_MIC_RATE)
    silence = lambda s: np.zeros(int(s * FAKE_MIC_RATE), np.float32)  # noqa: E731
    parts = [silence(3.0), story, silence(cough_after_s), cough(), silence(question_after_s), question, silence(40.0)]
    write_wav(path, np.concatenate(parts), FAKE_MIC_RATE)
    return path


def test_speaking_over_the_reply_mutes_it_in_the_page_and_the_server_cuts_it(
        pw: Any, server: ServeProcess, tmp_path: Path) -> None:
    """Over the avatar's story: a cough mutes it in the page for the grace time only (the
    server lets the story go on); then a question mutes it at once, the server cuts it, and
    the question is answered.

    ?raw=1 (open_page's default) plays the file to the server as it is. The echo rule (the
    avatar's own voice must not barge in) is not exercised here: the fake microphone plays a
    file, not the speaker (tests/test_echo_browser.py loops the page's audio back into its
    microphone through PulseAudio; test_barge_in_gate_in_virtual_time feeds the gate echo).
    """
    browser = launch_chromium(pw, fake_audio=barge_in_wav(tmp_path / "barge_in.wav"))
    page = open_page(browser, server.url)
    try:
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        wait_for(page, "() => /dragon/i.test(document.querySelector('#log .msg.user')?.textContent)", 30)
        cut = "() => document.querySelector('#log .msg.avatar.interrupted')"
        wait_for(page, cut, 40)
        wait_for(page, "() => [...document.querySelectorAll('#log .msg.avatar[data-final]')]"
                       ".some((li) => !li.classList.contains('interrupted'))", 60)
        user, avatar = log_lines(page, "user"), log_lines(page, "avatar")
        assert len(user) == 2 and "dragon" in user[0].lower(), user
        assert "capital" in user[1].lower() and "france" in user[1].lower(), user
        items = page.locator("#log .msg.avatar")
        assert "interrupted" in (items.nth(0).get_attribute("class") or "")
        assert "interrupted" not in (items.nth(1).get_attribute("class") or "") and avatar[1], avatar
        after = page.evaluate("getComputedStyle(document.querySelector('#log .msg.avatar.interrupted .body'),"
                              " '::after').content")
        assert "interrupted" in after and "—" in after, after
        messages = page.evaluate("avatarchat.messages")
        turns = [m["msg"] for m in messages if m["msg"].get("type") == "reply"]
        first = turns[0]["turn"]
        final = [m for m in turns if m["turn"] == first and m["final"]]
        assert final[-1].get("interrupted") is True
        cut_at = next(m["t"] for m in messages if m["msg"].get("interrupted"))
        check_page_barge_in(page, cut_at)
        print(f"\nbarge-in in the browser: first reply cut to {final[-1]['text']!r}; then {avatar[1]!r}")
    finally:
        close_pages(server, page)
        browser.close()


def check_page_barge_in(page: Any, cut_at: float) -> None:
    """The cough and the question in the page's own clock: mic envelope onsets, the gate's
    mutes, and the level the user heard (the avatar's voice times the element's volume)."""
    mic = page.evaluate("avatarchat.segments('mic', {threshold: %f, hangoverMs: 300, minMs: 50})" % AUDIBLE)
    gate = page.evaluate("avatarchat.bargeIn()")
    heard, remote = page.evaluate("avatarchat.envelope('heard')"), page.evaluate("avatarchat.envelope('remote')")
    t, level = np.asarray(heard["t"]), np.asarray(heard["rms"])
    incoming = dict(zip(remote["t"], remote["rms"]))
    messages = page.evaluate("avatarchat.messages")
    assert len(mic) >= 3, f"expected the request, the cough and the question in the mic: {mic}"
    _, blip, question = mic[:3]
    assert blip["end"] - blip["start"] < 300, f"not the cough: {blip}"
    for onset in (blip["start"], question["start"]):
        assert state_at(messages, onset) == "speaking", f"no reply playing at {onset:.0f} ms: {messages}"
    mutes = [e for e in gate["events"] if e["what"] == "mute"]
    assert [e["reason"] for e in mutes] == ["voice", "voice"], gate["events"]
    opened = [e for e in gate["events"] if e["what"] == "open"]

    # The cough: muted for the grace time, then back to full volume (the server let it go on).
    assert mutes[0]["t"] - blip["start"] <= 200, (blip, mutes[0])
    grace = next((e for e in opened if e["reason"] == "grace" and e["t"] > mutes[0]["t"]), None)
    assert grace is not None, gate["events"]
    assert gate["settings"]["graceMs"] - 50 <= grace["t"] - mutes[0]["t"] <= gate["settings"]["graceMs"] + 300
    after = (t > grace["t"] + 300) & (t < question["start"] - 50)
    assert after.any() and all(abs(x - incoming.get(ti, x)) < 1e-6 for ti, x in zip(t[after], level[after])), \
        "the story did not come back to full volume"
    assert cut_at > question["start"], "the cough cut the reply"

    # The question: detected within 200 ms of its onset in the mic envelope, heard silent
    # within 200 ms of that, and kept silent until the server's cut.
    detected = mutes[1]["t"]
    assert question["start"] - 50 <= detected <= question["start"] + 200, (question, mutes[1])
    quiet_from = t[(t >= detected) & (level < AUDIBLE)][0]
    assert quiet_from - detected < 200, f"heard silent {quiet_from - detected:.0f} ms after the detection"
    # (While the question goes on the page waits for a busy server's cut, up to 3 graces.)
    until = min(cut_at + 300, detected + 3 * gate["settings"]["graceMs"])
    assert level[(t >= detected + 200) & (t <= until)].max(initial=0) < AUDIBLE, "the avatar was heard again"
    assert any(e["what"] == "hold" and e["t"] >= detected for e in gate["events"]), gate["events"]
    arriving = max((x for ti, x in incoming.items() if detected < ti < cut_at), default=0.0)
    print(f"\npage barge-in: cough detected {mutes[0]['t'] - blip['start']:.0f} ms after its onset, "
          f"reopened after {grace['t'] - mutes[0]['t']:.0f} ms; question detected "
          f"{detected - question['start']:.0f} ms after its onset, heard silent "
          f"{quiet_from - question['start']:.0f} ms after it; server cut message "
          f"{cut_at - question['start']:.0f} ms after it (the voice still arriving meanwhile "
          f"peaked at {arriving:.3f} RMS)")


def state_at(messages: list[dict[str, Any]], t: float) -> str | None:
    """The conversation state the page had been told at time ``t``."""
    states = [m["msg"]["state"] for m in messages if m["msg"].get("type") == "state" and m["t"] <= t]
    return states[-1] if states else None


# The gate of web/bargein.js driven tick by tick in virtual time (10 ms ticks, as the page's
# probe drives it), in the page's own JavaScript engine: every case is deterministic.
GATE_HARNESS = """
async ([cases, config]) => {
  const { BargeInGate, settingsFrom } = await import(new URL("bargein.js", location.href).href);
  const out = {};
  for (const [name, source] of Object.entries(cases)) {
    const gate = new BargeInGate(() => {}, settingsFrom(config));
    let t = 1000, seed = 7;
    const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
    const h = {
      gate, rand, now: () => t,
      state: (s) => gate.onState(s, t),
      cut: () => gate.onReply({ type: "reply", turn: 1, text: "", final: true, interrupted: true }, t),
      muteNow: (reason) => gate.muteNow(reason, t),
      // `ms` of ticks; the mic's level and the avatar's as it arrives are functions of
      // the time; the user hears the latter times the gate's volume.
      run: (ms, mic, voice = () => 0) => {
        for (const end = t + ms; t < end; t += 10) {
          const incoming = voice(t);
          gate.tick(t, mic(t), incoming * gate.volume, incoming);
        }
      },
      // Speech-like levels: `level` give or take 30 %, every tick different.
      speech: (level) => () => level * (0.7 + 0.6 * rand()),
    };
    const marks = eval(source)(h) || {};
    out[name] = { ...gate.snapshot(), marks };
  }
  return out;
}
"""

GATE_CASES = {
    # A reply plays (heard ~0.1) while the mic is silent, or hears steady room noise that was
    # there before the reply, or hears a 20 ms click.
    "silence": "h => { h.run(2000, () => 0); h.state('speaking'); h.run(5000, () => 0, h.speech(0.1)); }",
    "noise": "h => { const n = () => 0.03 * (0.8 + 0.4 * h.rand());"
             " h.run(3000, n); h.state('speaking'); h.run(5000, n, h.speech(0.1)); }",
    "click": "h => { h.run(1000, () => 0); h.state('speaking'); h.run(500, () => 0, h.speech(0.1));"
             " const c = h.now(); h.run(1000, (t) => t < c + 20 ? 0.3 : 0, h.speech(0.1)); }",
    # The avatar's voice leaking back at -20 dB, 60 ms late (imperfect echo cancellation).
    "echo": "h => { const v = h.speech(0.15), past = new Map();"
            " const heard = (t) => { const x = v(); past.set(t, x); return x; };"
            " h.run(1000, () => 0); h.state('speaking');"
            " h.run(5000, (t) => 0.1 * (past.get(t - 60) || 0), heard); }",
    # The user speaks over the reply (at about its loudness); the server cuts it 450 ms later,
    # the user stops 150 ms after that, and a next reply starts 260 ms later, while the cut
    # one may still be buffered.
    "speech": "h => { h.run(1000, () => 0); h.state('speaking'); h.run(500, () => 0, h.speech(0.1));"
              " const onset = h.now(); h.run(450, h.speech(0.08), h.speech(0.1)); h.cut(); h.state('thinking');"
              " const cut = h.now(); h.run(150, h.speech(0.08)); h.run(260, () => 0); h.state('speaking');"
              " const next = h.now(); h.run(200, () => 0, h.speech(0.1)); return { onset, cut, next }; }",
    # A 100 ms cough: the server does not cut, the reply plays on.
    "cough": "h => { h.run(1000, () => 0); h.state('speaking'); h.run(500, () => 0, h.speech(0.1));"
             " const onset = h.now(); h.run(2000, (t) => t < onset + 100 ? 0.2 : 0, h.speech(0.1));"
             " return { onset }; }",
    # A deep jitter buffer: the cut reply still arrives for 700 ms after the server's cut.
    "buffered": "h => { h.run(1000, () => 0); h.state('speaking'); h.run(500, () => 0, h.speech(0.1));"
                " h.run(450, h.speech(0.08), h.speech(0.1)); h.cut(); h.state('listening'); const cut = h.now();"
                " h.run(700, h.speech(0.08), h.speech(0.1)); const drained = h.now();"
                " h.run(1000, () => 0); return { cut, drained }; }",
    # A busy server: the user talks on for 2 s and the cut comes 1.2 s after the onset.
    "slow": "h => { h.run(1000, () => 0); h.state('speaking'); h.run(500, () => 0, h.speech(0.1));"
            " h.run(1200, h.speech(0.08)); h.cut(); h.state('thinking'); h.run(800, h.speech(0.08)); }",
    # Something loud that goes on and on but never gets cut (music, a vacuum cleaner).
    "endless": "h => { h.run(1000, () => 0); h.state('speaking'); h.run(500, () => 0, h.speech(0.1));"
               " h.run(4000, h.speech(0.3)); }",
    # The user goes on speaking as the reply starts: muted at its start until the server's
    # cut; a click just before the reply starts is no speech.
    "underway": "h => { h.run(500, () => 0); h.run(300, h.speech(0.08)); const start = h.now();"
                " h.state('speaking'); h.run(400, h.speech(0.08), h.speech(0.1)); h.cut(); h.state('listening');"
                " h.run(1000, () => 0); return { start }; }",
    "click-before": "h => { h.run(500, () => 0); const c = h.now(); h.run(100, (t) => t < c + 20 ? 0.3 : 0);"
                    " h.state('speaking'); h.run(2000, () => 0, h.speech(0.1)); }",
    # A cough just before the reply starts: muted for the grace time only.
    "cough-before": "h => { h.run(500, () => 0); const c = h.now(); h.run(200, (t) => t < c + 100 ? 0.2 : 0);"
                    " const start = h.now(); h.state('speaking'); h.run(2000, () => 0, h.speech(0.1));"
                    " return { start }; }",
    # The interrupt button while the reply plays, then the server's cut.
    "interrupt": "h => { h.run(1000, () => 0); h.state('speaking'); h.run(500, () => 0, h.speech(0.1));"
                 " const at = h.now(); h.muteNow('interrupt'); const right_after = h.gate.volume;"
                 " h.run(30, () => 0, h.speech(0.1)); h.cut(); h.state('listening'); h.run(1000, () => 0);"
                 " return { at, right_after }; }",
}


def test_barge_in_gate_in_virtual_time(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url)
    try:
        out = page.evaluate(GATE_HARNESS, [GATE_CASES, None])
        for name in ("silence", "noise", "click", "echo", "click-before"):
            assert out[name]["events"] == [] and out[name]["volume"] == 1, (name, out[name]["events"])
        assert 0.01 < out["noise"]["floor"] < 0.04, out["noise"]["floor"]

        speech = out["speech"]
        onset, cut, nxt = (speech["marks"][k] for k in ("onset", "cut", "next"))
        mute, hold, reopen = speech["events"]
        assert (mute["what"], mute["reason"], hold["what"], hold["reason"]) == ("mute", "voice", "hold", "cut")
        assert hold["t"] == cut
        assert mute["onset"] == onset and onset + 40 <= mute["t"] <= onset + 70, mute
        assert mute["over"] >= 1.0, mute  # how far over its threshold the voice was, for the record
        assert volume_at(speech, mute["t"]) <= 0.5 and volume_at(speech, mute["t"] + 10) == 0
        # Muted from the detection through the cut, up to the next reply.
        assert max(v["volume"] for v in speech["volumeLog"] if mute["t"] + 10 <= v["t"] < nxt) == 0
        assert (reopen["what"], reopen["reason"], reopen["t"]) == ("open", "next reply", nxt), reopen
        assert speech["volume"] == 1 and speech["mode"] == "open"

        underway = out["underway"]
        assert [(e["what"], e["reason"]) for e in underway["events"]] == [
            ("mute", "talking"), ("hold", "cut"), ("open", "drained")]
        assert underway["events"][0]["t"] == underway["marks"]["start"]  # from the reply's first tick
        before = out["cough-before"]
        assert [(e["what"], e["reason"]) for e in before["events"]] == [("mute", "talking"), ("open", "grace")]
        assert before["events"][1]["t"] - before["marks"]["start"] == pytest.approx(800, abs=10)

        cough = out["cough"]
        mute, reopen = cough["events"]
        assert mute["reason"] == "voice" and (reopen["what"], reopen["reason"]) == ("open", "grace")
        assert reopen["t"] - mute["t"] == pytest.approx(800, abs=10)
        assert cough["volume"] == 1 and volume_at(cough, reopen["t"] + 60) < 1  # faded up, not stepped

        assert [(e["what"], e["reason"]) for e in out["slow"]["events"]] == [
            ("mute", "voice"), ("hold", "cut"), ("open", "drained")]  # never back up before the cut
        endless = out["endless"]
        mute, reopen = endless["events"]
        assert (reopen["what"], reopen["reason"]) == ("open", "grace") and reopen["t"] - mute["t"] <= 3 * 800 + 10

        buffered = out["buffered"]
        assert [(e["what"], e["reason"]) for e in buffered["events"]] == [
            ("mute", "voice"), ("hold", "cut"), ("open", "drained")]
        reopen, drained = buffered["events"][-1]["t"], buffered["marks"]["drained"]
        assert drained + 150 <= reopen <= drained + 170, (reopen, drained)

        interrupt = out["interrupt"]
        assert interrupt["marks"]["right_after"] <= 0.5  # at once, not at the next tick
        assert [(e["what"], e["reason"]) for e in interrupt["events"]] == [
            ("mute", "interrupt"), ("hold", "cut"), ("open", "drained")]

        # Turned off by the server: the page never mutes on its own.
        off = page.evaluate(GATE_HARNESS, [{k: GATE_CASES[k] for k in ("speech", "interrupt")}, {"client_mute": False}])
        assert all(case["events"] == [] and case["volume"] == 1 for case in off.values()), off
    finally:
        page.context.close()


def volume_at(case: dict[str, Any], t: float) -> float:
    """The gate's volume at time ``t`` from its log of changes."""
    return next((v["volume"] for v in reversed(case["volumeLog"]) if v["t"] <= t), 1.0)
