"""The web page in real headless Firefox ESR against a real `avatarchat serve` (real models).

Debian's ``firefox-esr`` (scripts/test.sh installs it), driven through Marionette, the remote
protocol built into every Firefox (``marionette_driver``): playwright's Firefox needs
Mozilla-patched builds and geckodriver is not packaged by Debian. The profile is fresh and
offline (no updates, telemetry, remote settings...), the microphone is Firefox's fake one,
and ICE gathers a 127.0.0.1 host candidate, so the test also passes on a machine whose only
interface is ``lo``.

Firefox's fake microphone plays a tone (silenced here: ``fake_frequency`` 0), not speech:
the typed question covers the pipeline from the page to the avatar's voice and back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avatarchat.bench.harness import ServeProcess, free_port
from tests.browser import wait_sessions
from tests.pulse import PulseLoop

pytestmark = pytest.mark.slow

marionette = pytest.importorskip("marionette_driver.marionette",
                                 reason="marionette_driver is not installed (pip install '.[test]')")

#: Debian's Firefox ESR (never a downloaded build).
FIREFOX = Path("/usr/bin/firefox-esr")

#: user.js of the fresh profile. Anything that would reach the network is off, media are fake
#: and play without a gesture, and ICE gathers host candidates on loopback.
PREFS: dict[str, Any] = {
    # Media: fake devices, no permission prompt, autoplay allowed.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.navigator.audio.fake_frequency": 0,  # the fake mic's tone, silenced (0 Hz)
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    # ICE on loopback. Firefox drops 127.0.0.1 unless `ice.loopback`; and a page that neither
    # captures a real device nor holds a microphone *permission* gathers only the address of
    # the default route (fake capture does not count), which a loopback-only machine does not
    # have: gathering then fails with no candidate at all. Allowing the microphone by default
    # lifts that (and the mDNS obfuscation of host addresses, also turned off explicitly).
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "permissions.default.microphone": 1,
    "media.peerconnection.default_iceservers": "[]",
    # The page's uncaught errors in Firefox's log (page_errors()).
    "devtools.console.stdout.content": True,
    # No network noise: updates, telemetry, studies, remote settings, safe browsing, captive
    # portal and connectivity checks, prefetching, add-on and plugin (OpenH264) downloads.
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "app.normandy.api_url": "",
    "app.shield.optoutstudies.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.telemetry.server": "data:,",
    "browser.ping-centre.telemetry": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.blocklist.enabled": False,
    "media.gmp-manager.url": "",
    "media.gmp-gmpopenh264.autoupdate": False,
    "browser.search.update": False,
    "geo.provider.network.url": "",
    # A quiet start: no first-run pages, no default-browser check, no session restore.
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "startup.homepage_welcome_url": "about:blank",
    "toolkit.startup.max_resumed_crashes": -1,
    "browser.sessionstore.resume_from_crash": False,
}

#: The page's size, as in the Chromium tests (bench/harness.py's open_page).
VIEWPORT = (1200, 860)

CONNECTED = "() => avatarchat.state().connection === 'connected'"
REPLY_DONE = "() => document.querySelector('#log .msg.avatar[data-final]')"
METRICS_SHOWN = "() => document.querySelectorAll('#metrics [data-key]').length > 0"
#: Records what the page posts to api/offer (its SDP, with the gathered candidates). Added as a
#: <script> so that the wrapper lives in the page's own realm, not in Marionette's.
RECORD_OFFERS = """
const script = document.createElement('script');
script.textContent = `
  window.__offers = [];
  const fetch0 = window.fetch;
  window.fetch = (url, init) => {
    if (String(url).endsWith('api/offer') && init?.body) window.__offers.push(JSON.parse(init.body).sdp);
    return fetch0(url, init);
  };`;
document.head.append(script);
"""


class Firefox:
    """Headless Firefox ESR in a fresh profile and its own session, driven by Marionette.

    ``js()`` runs a script in the page itself (no sandbox: ``window.avatarchat`` is visible);
    ``close()`` ends the Marionette session, stops all of Firefox's processes and raises if
    any is left.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="avatarchat-firefox-"))
        self.profile = self.dir / "profile"
        self.log_path = self.dir / "firefox.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.pulse: PulseLoop | None = None

    #: Prefs of this kind of Firefox on top of PREFS (user.js: Marionette cannot set them later).
    EXTRA_PREFS: dict[str, Any] = {}

    def start(self) -> Firefox:
        # Audio plays into a private PulseAudio's null sink: with no sound server (no
        # /dev/snd, and none autospawned for root) Firefox finds no backend, its AudioContext
        # and WebRTC playout stay "suspended", and the page's envelopes read silence. (Firefox
        # 140 has no pref for a fake output: media.cubeb.force_null_context keeps it suspended.)
        if shutil.which("pulseaudio") is None:
            raise RuntimeError("pulseaudio is missing: Firefox plays the page's audio into a private "
                               "PulseAudio daemon (scripts/test.sh installs it with apt)")
        self.pulse = PulseLoop(self.dir / "pulse", echo_db=-60.0)
        (self.dir / "pulse").mkdir()
        self.pulse.start()
        self.profile.mkdir()
        prefs = {**PREFS, **self.EXTRA_PREFS, "marionette.port": self.port}
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items()))
        # MOZ_DISABLE_NONLOCAL_CONNECTIONS: Firefox refuses any connection off this machine,
        # and (as for Mozilla's own test runs) honours services.settings.server above.
        env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_HEADLESS": "1",
               "MOZ_DISABLE_NONLOCAL_CONNECTIONS": "1", **self.pulse.env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(FIREFOX), "-headless", "-marionette", "-no-remote", "-profile", str(self.profile)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)  # its own session: close() finds all of it
        return self

    def connect(self, timeout: float = 60.0) -> Firefox:
        """Wait for Marionette's port and open a session (after ``start()``)."""
        assert self.proc is not None
        self.client = marionette.Marionette(host="127.0.0.1", port=self.port, startup_timeout=timeout)
        try:
            self.client.start_session()
        except Exception as exc:
            raise RuntimeError(f"Firefox did not answer on Marionette:\n{self.log_tail()}") from exc
        self.client.timeout.script = 30
        return self

    @property
    def version(self) -> str:
        return str(self.client.session_capabilities["browserVersion"])

    def js(self, script: str, *args: Any) -> Any:
        return self.client.execute_script(script, script_args=list(args), sandbox=None)

    def call(self, expression: str, *args: Any) -> Any:
        """The value of ``expression``, a JS function of ``args`` (as in the Chromium tests)."""
        return self.js(f"return ({expression})(...arguments);", *args)

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll ``expression`` (a JS function) until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.call(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout:.0f} s: {expression}\n"
                                     f"page state: {self.js('return window.avatarchat?.state()')}")
            time.sleep(0.1)

    def open(self, url: str) -> None:
        """Load ``url`` in a viewport of VIEWPORT (the window is sized so that it fits)."""
        width, height = VIEWPORT
        self.client.set_window_rect(width=width, height=height)
        inner = self.js("return [window.innerWidth, window.innerHeight]")
        self.client.set_window_rect(width=2 * width - inner[0], height=2 * height - inner[1])
        self.client.navigate(url)
        self.wait_for("() => window.avatarchat !== undefined", 10)

    def click(self, selector: str) -> None:
        self.client.find_element("css selector", selector).click()

    def type(self, selector: str, text: str) -> None:
        element = self.client.find_element("css selector", selector)
        element.clear()
        element.send_keys(text)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(self.client.screenshot(format="binary"))
        return path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def processes(self) -> list[int]:
        """Firefox's processes still running: its session (it starts its own, and all its
        children stay in it), zombies left out."""
        if self.proc is None:
            return []
        sid, found = self.proc.pid, []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == sid:
                found.append(int(entry))
        return found

    def close(self) -> None:
        """End the session, stop every Firefox process (SIGTERM, then SIGKILL) and remove
        the profile; raises if any Firefox process is left."""
        if self.client is not None:
            with contextlib.suppress(Exception):  # Firefox may already be gone
                self.client.delete_session()
            self.client = None
        proc = self.proc
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in self.processes():
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 10
                while (proc.poll() is None or self.processes()) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if proc.poll() is not None and not self.processes():
                    break
        left = self.processes()
        self.proc = None
        pulse, self.pulse = self.pulse, None
        if pulse is not None:
            pulse.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not left, f"Firefox processes were left running: {left}"

    def page_errors(self, url: str) -> list[str]:
        """Uncaught errors and unhandled rejections of pages under ``url``, from Firefox's log
        (``devtools.console.stdout.content``)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in lines if line.startswith(f"JavaScript error: {url}")]


def require_firefox() -> None:
    if not FIREFOX.is_file():
        pytest.skip(f"{FIREFOX} is missing: this test drives Debian's firefox-esr "
                    "(scripts/test.sh installs it with apt)")


@pytest.fixture(scope="module")
def firefox_and_server() -> Iterator[tuple[Firefox, ServeProcess]]:
    """Firefox and the server, started side by side; both stopped, Firefox's processes checked."""
    require_firefox()
    firefox = Firefox().start()
    try:
        with ServeProcess() as server:
            firefox.connect()
            try:
                yield firefox, server
            finally:
                print(f"\n--- Firefox {firefox.version} log (tail)\n{firefox.log_tail()}"
                      f"\n--- server log (tail)\n{server.log_tail()}")
    finally:
        firefox.close()


def log_lines(firefox: Firefox, kind: str) -> list[str]:
    return firefox.call(f"() => [...document.querySelectorAll('#log .msg.{kind} .body')]"
                        ".map((e) => e.innerText.trim())")


def stats(firefox: Firefox) -> dict[str, Any]:
    """The page's getStats summary (``avatarchat.stats()``) plus the video element's state."""
    return firefox.client.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const video = document.querySelector('#avatar-video');
        avatarchat.stats().then((s) => done(JSON.parse(JSON.stringify({
          ...s,
          element: {width: video.videoWidth, height: video.videoHeight, time: video.currentTime,
                    paused: video.paused, now: performance.now()},
        }))), (e) => done({error: String(e)}));
    """, sandbox=None)


def assert_not_blank(png: Path) -> None:
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.size > 0, f"{png} is not an image"
    assert (img.shape[1], img.shape[0]) == VIEWPORT, f"screenshot is {img.shape[1]}x{img.shape[0]}"
    assert float(img.std()) > 15.0, f"{png} looks blank (std {img.std():.1f})"


def test_firefox_connects_shows_the_avatar_and_answers_a_typed_question(
        firefox_and_server: tuple[Firefox, ServeProcess], tmp_path: Path) -> None:
    firefox, server = firefox_and_server
    firefox.open(server.url + "?raw=1&avatar=video")  # the server's video (the page would draw it)
    firefox.js(RECORD_OFFERS)
    firefox.click("#start")
    firefox.wait_for(CONNECTED, 20)
    assert firefox.call("() => document.querySelector('#connection').dataset.state") == "connected"
    state = firefox.js("return avatarchat.state()")
    assert state["mic"] == "on" and state["banner"] is None, state
    firefox.wait_for("() => avatarchat.state().dataChannel === 'open'", 10)

    # ICE: Firefox offered a 127.0.0.1 host candidate (what a loopback-only machine needs).
    offers = firefox.js("return window.__offers")
    assert len(offers) == 1
    hosts = [line.split()[4] for line in offers[0].splitlines() if line.startswith("a=candidate:") and "typ host" in line]
    assert "127.0.0.1" in hosts, hosts

    # Video: decoded over 2 s (the rate is a performance figure: `avatarchat bench e2e`),
    # 512x512 in the element, playing, frames rendered.
    firefox.wait_for("() => document.querySelector('#avatar-video').currentTime > 0", 10)
    s0, t0 = stats(firefox), time.monotonic()
    time.sleep(2.0)
    s1, t1 = stats(firefox), time.monotonic()
    assert s1["video"]["codec"] == "video/VP8", s1["video"]
    fps = (s1["video"]["framesDecoded"] - s0["video"]["framesDecoded"]) / (t1 - t0)
    assert fps >= 5, f"decoded {fps:.1f} fps"
    assert (s1["element"]["width"], s1["element"]["height"]) == (512, 512), s1["element"]
    assert not s1["element"]["paused"]
    played = s1["element"]["time"] - s0["element"]["time"]
    assert played >= 0.75 * (s1["element"]["now"] - s0["element"]["now"]) / 1000, (s0["element"], s1["element"])
    assert s1["rvfc"]["frames"] > s0["rvfc"]["frames"], (s0["rvfc"], s1["rvfc"])
    assert s1["mic"]["packetsSent"] > s0["mic"]["packetsSent"], "the microphone is not sent"

    # A typed question: the reply's text in the log, its voice arriving and audible.
    question = "What is the capital of Italy?"
    firefox.type("#text", question)
    firefox.click("#send")
    firefox.wait_for(REPLY_DONE, 40)
    assert log_lines(firefox, "user") == [question]
    replies = log_lines(firefox, "avatar")
    assert len(replies) == 1 and replies[0], replies
    asked = next(m["t"] for m in firefox.js("return avatarchat.messages") if m["msg"]["type"] == "text")
    voiced = f"() => avatarchat.segments('remote').filter((s) => s.start > {asked} && s.peak > 0.02)"
    heard = firefox.wait_for(voiced, 20)
    assert heard, heard
    s2 = stats(firefox)
    assert s2["audio"]["codec"] == "audio/opus", s2["audio"]
    assert s2["audio"]["totalSamplesReceived"] > s1["audio"]["totalSamplesReceived"]
    # Nobody spoke over the reply (the fake mic is silent): the page never muted it.
    events = firefox.js("return avatarchat.bargeIn().events")
    assert not [e for e in events if e["what"] == "mute" and e["reason"] == "voice"], events

    # The turn's latency figures, then the page as a user sees it.
    firefox.wait_for(METRICS_SHOWN, 30)
    shot = firefox.screenshot(tmp_path / "firefox.png")
    print(f"\nscreenshot: {shot}; reply: {replies[0]!r}; video {fps:.1f} fps")
    assert_not_blank(shot)

    firefox.click("#stop")
    firefox.wait_for("() => avatarchat.state().connection === 'idle'", 5)
    assert firefox.js("return avatarchat.state().mic") == "none"  # the mic was released
    wait_sessions(server, 0)
    assert firefox.page_errors(server.url) == []
