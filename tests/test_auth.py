"""Who may call `avatarchat serve`: access tokens, the page's origin, Host names, the bind rule.

The real aiohttp app on 127.0.0.1 with the stand-in peer factory of test_server_http.py (no
WebRTC: these tests are about who gets through the front door). The last test is the real
page in headless Chromium against a real `avatarchat serve` with auth on.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml

from avatarchat.cli.errors import UserError
from avatarchat.cli.main import main
from avatarchat.cli.serve import check_access
from avatarchat.config import DEFAULT_CONFIG
from avatarchat.server.app import STATE
from avatarchat.server.auth import check_token, client_address, make_token, parse_networks
from avatarchat.server.settings import ServerSettings
from tests.test_server_http import OFFER, running

SECRET = "s3cret-for-tests-only-0123456789abcdef-0123456789abcdef-0123456789"
OTHER = "another-secret-entirely-0123456789abcdef"


def with_auth(**server: Any) -> ServerSettings:
    return ServerSettings.model_validate({"auth": {"secret": SECRET}, **server})


async def call(http: aiohttp.ClientSession, url: str, path: str, *, token: str | None = None,
               headers: dict[str, str] | None = None, body: Any = OFFER) -> tuple[int, Any, Any]:
    """``(status, JSON body, headers)`` of GET ``path`` (POST with ``body`` for /api/offer)."""
    post = path.split("?")[0] == "/api/offer"
    h = {"Content-Type": "application/json"} if post else {}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers or {})
    method = "POST" if post else "GET"
    data = json.dumps(body) if method == "POST" else None
    async with http.request(method, url + path, data=data, headers=h) as r:
        payload = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, payload, r.headers


def config_file(tmp_path: Path, **auth: Any) -> Path:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config.setdefault("server", {})["auth"] = auth
    path = tmp_path / "auth.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- tokens -----------------------------------------------------------------------------------


def test_token_command_prints_a_token_the_server_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AVATARCHAT_SECRET", SECRET)
    path = config_file(tmp_path, secret="${AVATARCHAT_SECRET}", max_ttl_s=7200)
    assert main(["token", "--config", str(path), "--ttl", "2h", "--name", "ada"]) == 0
    token = capsys.readouterr().out.strip()
    claims = check_token(SECRET, token)
    assert claims["sub"] == "ada" and claims["exp"] - claims["iat"] == 7200 and len(claims["jti"]) == 32
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


@pytest.mark.parametrize("auth, args, expected", [
    ({}, [], "server.auth.secret is not set"),
    ({"secret": "too-short"}, [], "use at least 32"),
    ({"secret": SECRET, "max_ttl_s": 3600}, ["--ttl", "2h"], "longer than server.auth.max_ttl_s (3600 s)"),
    ({"secret": SECRET}, ["--ttl", "soon"], "is not a duration"),
])
def test_token_command_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           auth: dict[str, Any], args: list[str], expected: str) -> None:
    assert main(["token", "--config", str(config_file(tmp_path, **auth)), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and expected in captured.err


def forged(claims: dict[str, Any], alg: str = "none") -> str:
    """A token with ``alg: none`` (no signature): what a forger without the secret can make."""
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': alg, 'typ': 'JWT'})}.{enc(claims)}."


async def test_without_a_valid_token_the_api_is_401_and_static_files_stay_open() -> None:
    now = int(time.time())
    good_claims = {"sub": "eve", "iat": now, "exp": now + 600, "jti": "x"}
    bad = {
        "no token": None,
        "expired": make_token(SECRET, "old", 60, now=time.time() - 3600),
        "other secret": make_token(OTHER, "eve", 600),
        "alg none": forged(good_claims),
        "HS512": jwt.encode(good_claims, SECRET, algorithm="HS512"),
        "no exp": jwt.encode({k: v for k, v in good_claims.items() if k != "exp"}, SECRET, algorithm="HS256"),
        "garbage": "not-a-jwt",
    }
    async with running(with_auth()) as (url, app), aiohttp.ClientSession() as http:
        for why, token in bad.items():
            for path in ("/api/offer", "/api/config", "/metrics"):
                status, body, headers = await call(http, url, path, token=token)
                assert status == 401, (why, path)
                assert headers["WWW-Authenticate"].startswith("Bearer") and body["error"], (why, path)
        assert len(app[STATE].manager) == 0
        status, body, _ = await call(http, url, "/api/config", token=bad["expired"])
        assert "expired" in body["error"]
        # The page and the health check need no token.
        for path in ("/", "/healthz"):
            async with http.get(url + path) as r:
                assert r.status == 200, path


async def test_a_good_token_works_as_bearer_header_and_as_query_parameter() -> None:
    token = make_token(SECRET, "ada", 600)
    async with running(with_auth()) as (url, app), aiohttp.ClientSession() as http:
        for path in ("/api/config", "/metrics", "/api/offer"):
            assert (await call(http, url, path, token=token))[0] == 200, path
        assert (await call(http, url, f"/api/config?token={token}"))[0] == 200
        assert (await call(http, url, f"/api/offer?token={token}"))[0] == 200
        assert len(app[STATE].manager) == 2


# -- origin, Host, content type ------------------------------------------------------------


async def test_cross_origin_api_requests_get_403_with_auth_on_or_off() -> None:
    token = make_token(SECRET, "ada", 600)
    for settings, tok in ((ServerSettings(), None), (with_auth(), token)):
        async with running(settings) as (url, app), aiohttp.ClientSession() as http:
            for path in ("/api/offer", "/api/config", "/metrics"):
                for origin in ("http://evil.example", "null", url.replace("127.0.0.1", "127.0.0.1.evil.example")):
                    status, body, _ = await call(http, url, path, token=tok, headers={"Origin": origin})
                    assert status == 403 and "cross-origin" in body["error"], (path, origin)
            assert len(app[STATE].manager) == 0
            # The page's own origin passes, with the default port spelled or not.
            assert (await call(http, url, "/api/offer", token=tok, headers={"Origin": url}))[0] == 200


async def test_allowed_origins_may_call_the_api() -> None:
    settings = ServerSettings(allowed_origins=["https://app.example.org"], max_sessions_per_client=9)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        ok = await call(http, url, "/api/offer", headers={"Origin": "https://APP.example.org:443"})
        assert ok[0] == 200
        assert (await call(http, url, "/api/offer", headers={"Origin": "http://app.example.org"}))[0] == 403


async def test_a_cross_site_form_post_without_json_content_type_gets_415() -> None:
    async with running() as (url, app), aiohttp.ClientSession() as http:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            async with http.post(url + "/api/offer", data=json.dumps(OFFER), headers={"Content-Type": ctype}) as r:
                assert r.status == 415 and "application/json" in (await r.json())["error"]
        async with http.post(url + "/api/offer", data=json.dumps(OFFER).encode(),
                             skip_auto_headers=["Content-Type"]) as r:
            assert r.status == 415
        assert len(app[STATE].manager) == 0


async def test_dns_rebinding_host_names_get_403_on_a_loopback_bind() -> None:
    async with running() as (url, _), aiohttp.ClientSession() as http:
        port = url.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", "localhost:1", f"127.0.0.1.nip.io:{port}"):
            for path in ("/api/config", "/", "/api/offer"):
                status, body, _ = await call(http, url, path, headers={"Host": host})
                assert status == 403 and "localhost" in body["error"], (host, path)
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
            assert (await call(http, url, "/api/config", headers={"Host": host}))[0] == 200, host


async def test_a_reverse_proxy_on_this_machine_may_pass_its_public_host_once_its_origin_is_allowed() -> None:
    settings = ServerSettings(allowed_origins=["https://avatar.example.org"])
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        proxied = {"Host": "avatar.example.org", "Origin": "https://avatar.example.org"}
        assert (await call(http, url, "/api/config", headers=proxied))[0] == 200
        assert (await call(http, url, "/api/config", headers={"Host": "evil.example"}))[0] == 403


async def test_other_binds_accept_any_host_but_still_check_origin_against_it() -> None:
    async with running(ServerSettings(host="0.0.0.0")) as (url, _), aiohttp.ClientSession() as http:
        headers = {"Host": "avatar.example.org:8443", "Origin": "http://avatar.example.org:8443"}
        assert (await call(http, url, "/api/config", headers=headers))[0] == 200
        headers["Origin"] = "http://evil.example"
        assert (await call(http, url, "/api/config", headers=headers))[0] == 403


def test_the_client_address_is_the_last_hop_no_trusted_proxy_added() -> None:
    proxies = parse_networks(["10.0.0.1", "192.168.0.0/16"])
    assert client_address("203.0.113.5", "1.2.3.4", proxies) == "203.0.113.5"  # not from a proxy: ignored
    assert client_address("10.0.0.1", "1.2.3.4, 198.51.100.7", proxies) == "198.51.100.7"
    assert client_address("10.0.0.1", "6.6.6.6, 198.51.100.7, 192.168.3.4", proxies) == "198.51.100.7"
    assert client_address("10.0.0.1", None, proxies) == "10.0.0.1"
    assert client_address("10.0.0.1", "not-an-ip", proxies) == "10.0.0.1"
    with pytest.raises(ValueError, match="trusted_proxies: 'proxy.lan'"):
        parse_networks(["proxy.lan"])


async def test_the_per_client_cap_counts_the_forwarded_address_and_answers_429() -> None:
    settings = ServerSettings(trusted_proxies=["127.0.0.1"], max_sessions=5, max_sessions_per_client=1)
    async with running(settings) as (url, app), aiohttp.ClientSession() as http:
        first = {"X-Forwarded-For": "198.51.100.7"}
        assert (await call(http, url, "/api/offer", headers=first))[0] == 200
        status, body, headers = await call(http, url, "/api/offer", headers=first)
        assert status == 429 and headers["Retry-After"] and "1 session" in body["error"]
        assert (await call(http, url, "/api/offer", headers={"X-Forwarded-For": "198.51.100.8"}))[0] == 200
        assert len(app[STATE].manager) == 2


async def test_config_makes_turn_credentials_per_request_and_keeps_static_passwords_from_open_servers() -> None:
    settings = ServerSettings.model_validate({
        "host": "0.0.0.0",  # the rule reads the bind; the test itself listens on 127.0.0.1
        "ice_servers": [{"urls": ["turn:static.example.org"], "username": "u", "credential": "long-lived"}],
        "turn": {"urls": ["turn:127.0.0.1:3478"], "secret": "coturn-secret", "ttl_s": 600, "relay_only": True}})
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        bodies = []
        for _ in range(2):
            async with http.get(url + "/api/config") as r:
                bodies.append(await r.json())
    for body in bodies:
        static, rest = body["ice_servers"]
        # No auth on a non-loopback bind: anyone may ask, so the static password stays home.
        assert static == {"urls": ["turn:static.example.org"]}
        expiry, _, name = rest["username"].partition(":")
        assert rest["urls"] == ["turn:127.0.0.1:3478"] and name.startswith("anon-127.0.0.1")
        assert 590 <= int(expiry) - time.time() <= 610 and rest["credential"] != "coturn-secret"
        assert body["ice_transport_policy"] == "relay"


async def test_token_holders_get_the_static_turn_password_on_a_network_bind() -> None:
    settings = with_auth(host="0.0.0.0", ice_servers=[{"urls": ["turn:t.example.org"], "username": "u",
                                                       "credential": "long-lived"}])
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        status, body, _ = await call(http, url, "/api/config", token=make_token(SECRET, "ada", 600))
    assert status == 200 and body["ice_servers"] == [{"urls": ["turn:t.example.org"], "username": "u",
                                                      "credential": "long-lived"}]


# -- the bind rule ----------------------------------------------------------------------------


def test_serve_refuses_a_network_bind_without_auth_unless_no_auth() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        assert check_access(ServerSettings(host=host), no_auth=False) is None
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(UserError, match="--no-auth"):
            check_access(ServerSettings(host=host), no_auth=False)
        warning = check_access(ServerSettings(host=host), no_auth=True)
        assert warning is not None and warning.startswith("warning: --no-auth") and "\n" not in warning
        assert check_access(with_auth(host=host), no_auth=False) is None
    with pytest.raises(UserError, match="at least 32"):
        check_access(ServerSettings.model_validate({"host": "0.0.0.0", "auth": {"secret": "short"}}), no_auth=False)
    with pytest.raises(UserError, match="trusted_proxies"):
        check_access(ServerSettings(trusted_proxies=["nope"]), no_auth=False)


def test_serve_command_exits_2_on_a_network_bind_without_auth(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any model loads or any port is bound.
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "server.auth.secret" in err[0] and "--no-auth" in err[0]


async def test_a_request_without_a_host_header_is_refused_on_a_loopback_bind() -> None:
    from tests.test_http_hardening import exchange

    async with running() as (url, _):
        status, _, body = await exchange(int(url.rsplit(":", 1)[1]), b"GET /api/config HTTP/1.0\r\n\r\n")
        assert status == 403 and "localhost" in json.loads(body)["error"]
