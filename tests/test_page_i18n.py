"""The page in Chinese and in English, in real headless Chromium against real `avatarchat serve`s.

The page's language (web/i18n.js): the link's ``?lang=``, else the server's (``/api/config``'s
``language``, the config's ``session.language``), else the browser's. The English server is
conftest's ``server`` (the embedded default); the Chinese one is the same stack with
``session.language: zh`` (the page's language is all this file tests: the Chinese models are
tested elsewhere).
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.browser import CONNECTED, ServeProcess, close_pages, open_page, require_chromium, wait_for
from tests.configs import greedy_default

pytestmark = pytest.mark.slow

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

#: Where the Chinese page's screenshot goes, to be looked at (fonts: CJK glyphs or boxes).
SCREENSHOT = Path("/tmp/avatarchat-page-zh.png")
REPLY_DONE = "() => document.querySelector('#log .msg.avatar[data-final]')"
#: Latin words that stay as they are in the Chinese page: names of things, and units.
LATIN_KEPT = {"avatarchat", "WebRTC", "WebSocket", "WebGL", "AI", "ms", "UDP", "ICE"}


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """Replaces conftest's asyncio check: playwright's sync API runs its own event loop here."""


@pytest.fixture(scope="module")
def zh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The embedded default with ``session.language: zh``: the page should follow it."""
    require_chromium()
    path = greedy_default(tmp_path_factory.mktemp("config"), without=("avatar",))
    config = yaml.safe_load(path.read_text())
    config["session"]["language"] = "zh"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    with ServeProcess(config=path) as server:
        yield server


def page_language(page: Any) -> dict[str, str]:
    """Waits until the page has settled its language (it asks the server at once), then says it."""
    wait_for(page, "() => avatarchat.language().source !== 'browser' || performance.now() > 2500", 10)
    return page.evaluate("avatarchat.language()")


def fixed_texts(page: Any) -> dict[str, str]:
    """What a user reads on the page before talking: texts and the attributes read out."""
    return page.evaluate("""() => {
        const text = (sel) => document.querySelector(sel).textContent;
        const attr = (sel, name) => document.querySelector(sel).getAttribute(name);
        return {
            lang: document.documentElement.lang, start: text('#start'), stop: text('#stop'),
            mute: text('#mute'), interrupt: text('#interrupt'), send: text('#send'),
            placeholder: text('#placeholder'), synthetic: text('#synthetic-label'),
            connection: text('#connection .badge-text'), connectionTitle: attr('#connection', 'title'),
            input: attr('#text', 'placeholder'), message: text('label[for=text]'),
            lastTurn: document.querySelector('.metrics-panel h2').textContent.trim(),
            metricsEmpty: text('#metrics-empty'), dismiss: attr('#banner-close', 'aria-label'),
            stage: attr('.stage', 'aria-label'), video: attr('#avatar-video', 'aria-label'),
        };
    }""")


def cut_reply_marks(page: Any) -> list[str]:
    """What style.css adds after a cut reply's words, and in place of none (a scratch line)."""
    return page.evaluate("""() => {
        const li = document.createElement('li');
        li.className = 'msg avatar interrupted';
        li.innerHTML = '<span class="body">words</span>';
        document.querySelector('#log').append(li);
        const mark = () => JSON.parse(getComputedStyle(li.firstChild, '::after').content);
        const after = mark();
        li.firstChild.textContent = '';
        const empty = mark();
        li.remove();
        return [after, empty];
    }""")


def latin_words(page: Any) -> set[str]:
    """Latin-script words the page shows (texts, labels read out, placeholders), leaving out
    what was said in the conversation (the English model answers in English)."""
    words = page.evaluate("""() => {
        const body = document.body.cloneNode(true);
        body.querySelectorAll('#log .msg .body').forEach((el) => el.remove());
        const attrs = [...body.querySelectorAll('[aria-label], [title], [placeholder]')]
            .flatMap((el) => ['aria-label', 'title', 'placeholder'].map((a) => el.getAttribute(a) || ''));
        const shown = [...body.querySelectorAll('*')].filter((el) => !el.closest('[hidden]'))
            .flatMap((el) => [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent));
        return [...shown, ...attrs].join(' ').match(/[A-Za-z]{2,}/g) || [];
    }""")
    return set(words) - LATIN_KEPT


def test_every_language_has_every_key(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url)
    try:
        tables = page.evaluate("""async () => {
            const { STRINGS } = await import('./i18n.js');
            return Object.fromEntries(Object.entries(STRINGS).map(([lang, table]) => [lang, Object.keys(table)]));
        }""")
    finally:
        page.context.close()
    assert set(tables) == {"en", "zh"}
    assert sorted(tables["zh"]) == sorted(tables["en"])
    assert len(tables["en"]) > 80


def test_a_zh_link_shows_the_page_and_a_session_in_chinese(quiet_browser: Any, server: ServeProcess) -> None:
    page = open_page(quiet_browser, server.url + "?lang=zh", locale="en-US")
    try:
        assert page_language(page) == {"lang": "zh", "source": "query"}
        texts = fixed_texts(page)
        assert texts == {
            "lang": "zh-CN", "start": "开始", "stop": "停止", "mute": "麦克风静音", "interrupt": "打断",
            "send": "发送", "placeholder": "点击开始即可对话", "synthetic": "AI 生成的动画形象，并非真人录像",
            "connection": "未连接", "connectionTitle": "连接", "input": "输入消息", "message": "消息",
            "lastTurn": "上一轮", "metricsEmpty": "第一次回复后显示各环节耗时。", "dismiss": "关闭",
            "stage": "数字人", "video": "数字人视频"}, texts
        assert latin_words(page) == set()
        assert cut_reply_marks(page) == [" —— 已打断", "一个字还没说就停下了"]

        page.click("#start")
        wait_for(page, CONNECTED, 20)
        assert page.locator("#connection .badge-text").inner_text() == "已连接"
        assert page.locator("#transport-status").inner_text() == "已通过 WebRTC 连接"
        wait_for(page, "() => document.querySelector('#conversation .badge-text').textContent === '聆听中'", 10)
        page.click("#mute")
        assert page.locator("#mute").inner_text() == "打开麦克风"
        page.click("#mute")
        assert page.locator("#mute").inner_text() == "麦克风静音"

        page.fill("#text", "What is the capital of Italy?")
        page.click("#send")
        wait_for(page, REPLY_DONE, 60)
        wait_for(page, "() => document.querySelectorAll('#metrics [data-key]').length > 0", 40)
        who = page.locator("#log .msg .who").all_inner_texts()
        assert [w.strip() for w in who] == ["你（输入）", "数字人"], who
        labels = dict(zip(page.evaluate("[...document.querySelectorAll('#metrics [data-key]')].map(e => e.dataset.key)"),
                          page.locator("#metrics dt").all_inner_texts(), strict=True))
        assert labels["first_audio_sent_ms"] == "第一段音频发出", labels
        assert re.fullmatch(r"（第 \d+ 轮）", page.locator("#metrics-turn").inner_text())
        wait_for(page, "() => avatarchat.state().conversation === 'listening'", 30)
        assert latin_words(page) == set()
        page.screenshot(path=str(SCREENSHOT))

        page.click("#stop")
        assert page.locator("#log .msg.system .body").all_inner_texts()[-1] == "会话已结束。"
        assert page.locator("#connection .badge-text").inner_text() == "未连接"
        assert page.locator("#placeholder").inner_text() == "点击开始即可对话"
    finally:
        close_pages(server, page)


def test_an_english_server_keeps_the_page_in_english_whatever_the_browser(
        quiet_browser: Any, server: ServeProcess) -> None:
    for locale in ("en-US", "zh-CN"):
        page = open_page(quiet_browser, server.url, locale=locale)
        try:
            assert page_language(page) == {"lang": "en", "source": "server"}, locale
            assert fixed_texts(page) == ENGLISH, locale
            assert cut_reply_marks(page) == [" — interrupted", "stopped before a word was said"]
        finally:
            page.context.close()


def test_an_unknown_lang_falls_back_to_the_server(quiet_browser: Any, server: ServeProcess) -> None:
    for query in ("?lang=fr", "?lang=", "?lang=constructor", "?lang=%3Cb%3Ezh"):
        page = open_page(quiet_browser, server.url + query, locale="zh-CN")
        try:
            assert page_language(page) == {"lang": "en", "source": "server"}, query
            assert fixed_texts(page) == ENGLISH, query
            assert page.locator("#banner").is_hidden()
        finally:
            page.context.close()


def test_without_an_answer_from_the_server_the_page_takes_the_browsers_language(
        quiet_browser: Any, server: ServeProcess) -> None:
    # The one stand-in here: the page's request for /api/config is refused in the browser, as
    # when the server is down or the link lacks its token (nothing else can make the real
    # server stay silent for one page only).
    context = quiet_browser.new_context(locale="zh-CN")
    try:
        page = context.new_page()
        page.route("**/api/config", lambda route: route.abort())
        page.goto(server.url + "?raw=1")
        page.wait_for_function("() => window.avatarchat !== undefined")
        assert page.evaluate("avatarchat.language()") == {"lang": "zh", "source": "browser"}
        assert page.locator("#start").inner_text() == "开始"
    finally:
        context.close()


def test_a_server_whose_config_says_zh_gets_a_chinese_page(quiet_browser: Any, zh_server: ServeProcess) -> None:
    with urllib.request.urlopen(zh_server.url + "api/config", timeout=5) as resp:
        assert json.load(resp)["language"] == "zh"
    page = open_page(quiet_browser, zh_server.url, locale="en-US")
    try:
        assert page_language(page) == {"lang": "zh", "source": "server"}
        assert fixed_texts(page)["start"] == "开始" and fixed_texts(page)["lang"] == "zh-CN"
        page.click("#start")
        wait_for(page, CONNECTED, 20)
        assert page.locator("#connection .badge-text").inner_text() == "已连接"
        assert latin_words(page) == set()
    finally:
        close_pages(zh_server, page)
    # The link still wins over the server.
    page = open_page(quiet_browser, zh_server.url + "?lang=en", locale="zh-CN")
    try:
        assert page_language(page) == {"lang": "en", "source": "query"}
        assert fixed_texts(page) == ENGLISH
    finally:
        page.context.close()


#: The page's fixed texts in English: exactly as before the page had a second language.
ENGLISH = {
    "lang": "en", "start": "Start", "stop": "Stop", "mute": "Mute mic", "interrupt": "Interrupt",
    "send": "Send", "placeholder": "Press Start to talk", "synthetic": "AI-animated likeness — not a real recording",
    "connection": "idle", "connectionTitle": "Connection", "input": "Type a message", "message": "Message",
    "lastTurn": "Last turn", "metricsEmpty": "Timings appear after the first reply.", "dismiss": "Dismiss",
    "stage": "Avatar", "video": "Avatar video"}
