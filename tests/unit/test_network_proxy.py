"""Proxy selection, NO_PROXY matching, credentials file and log redaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from credential_sidecar.config.values import check_proxy_url
from credential_sidecar.upstream.proxy import (
    ProxyConfigError,
    ProxyCredentials,
    bypass_proxy,
    decide,
    load_proxy_credentials,
    normalize_proxy_url,
    redact,
    select_proxy,
)

P = "http://proxy.internal:3128"
Q = "http://other.internal:8080"

# --- which variable ------------------------------------------------------------------------------

ENV_CASES: list[tuple[str, dict[str, str], str | None]] = [
    ("https://sts.amazonaws.com/", {}, None),
    ("https://sts.amazonaws.com/", {"https_proxy": P}, P),
    ("https://sts.amazonaws.com/", {"HTTPS_PROXY": P}, P),
    ("https://sts.amazonaws.com/", {"https_proxy": P, "HTTPS_PROXY": Q}, P),
    ("https://sts.amazonaws.com/", {"https_proxy": "", "HTTPS_PROXY": Q}, Q),
    ("https://sts.amazonaws.com/", {"http_proxy": P}, None),
    ("https://sts.amazonaws.com/", {"HTTP_PROXY": P}, None),
    ("https://sts.amazonaws.com/", {"all_proxy": P}, P),
    ("https://sts.amazonaws.com/", {"ALL_PROXY": P}, P),
    ("https://sts.amazonaws.com/", {"all_proxy": P, "ALL_PROXY": Q}, P),
    ("https://sts.amazonaws.com/", {"HTTPS_PROXY": P, "all_proxy": Q}, P),
    ("http://127.0.0.1:8443/", {"http_proxy": P}, P),
    ("http://127.0.0.1:8443/", {"HTTP_PROXY": P}, None),  # httpoxy: never uppercase
    ("http://127.0.0.1:8443/", {"HTTP_PROXY": P, "ALL_PROXY": Q}, Q),
    ("http://127.0.0.1:8443/", {"https_proxy": P}, None),
    ("HTTPS://STS.AMAZONAWS.COM/", {"https_proxy": P}, P),
]


@pytest.mark.parametrize(("url", "env", "expected"), ENV_CASES)
def test_env_variables(url: str, env: dict[str, str], expected: str | None) -> None:
    assert select_proxy(url, env=env) == expected


def test_source_is_reported() -> None:
    d = decide("https://a.example/", env={"HTTPS_PROXY": P})
    assert (d.url, d.source) == (P, "HTTPS_PROXY")
    assert d.for_log() == f"{P} (from HTTPS_PROXY)"
    d = decide("https://a.example/", env={"HTTPS_PROXY": P, "NO_PROXY": "example"})
    assert (d.url, d.source, d.for_log()) == (None, "NO_PROXY", "direct")


def test_configured_proxy_wins_over_env() -> None:
    env = {"https_proxy": Q, "HTTPS_PROXY": Q, "ALL_PROXY": Q}
    assert select_proxy("https://a.example/", proxy=P, env=env) == P


def test_configured_empty_proxy_disables_env() -> None:
    assert select_proxy("https://a.example/", proxy="", env={"https_proxy": P}) is None


def test_no_proxy_applies_to_configured_proxy() -> None:
    env = {"NO_PROXY": "a.example"}
    assert select_proxy("https://a.example/", proxy=P, env=env) is None
    assert select_proxy("https://b.example/", proxy=P, env=env) == P


def test_configured_no_proxy_replaces_env() -> None:
    env = {"HTTPS_PROXY": P, "NO_PROXY": "a.example"}
    assert select_proxy("https://a.example/", env=env, no_proxy="b.example") == P
    assert select_proxy("https://b.example/", env=env, no_proxy="b.example") is None
    assert select_proxy("https://a.example/", env=env, no_proxy="") == P


def test_lowercase_no_proxy_first() -> None:
    env = {"HTTPS_PROXY": P, "no_proxy": "a.example", "NO_PROXY": "b.example"}
    assert select_proxy("https://a.example/", env=env) is None
    assert select_proxy("https://b.example/", env=env) == P
    env["no_proxy"] = ""  # empty counts as unset
    assert select_proxy("https://b.example/", env=env) is None


def test_default_env_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", P)
    assert select_proxy("https://a.example/") == P
    monkeypatch.setenv("NO_PROXY", "*")
    assert select_proxy("https://a.example/") is None


# --- NO_PROXY patterns ---------------------------------------------------------------------------

NO_PROXY_CASES: list[tuple[str, int | None, str, bool]] = [
    # host, port, no_proxy, bypass?
    ("example.com", 443, "", False),
    ("example.com", 443, "*", True),
    ("example.com", 443, " * ", True),
    ("example.com", 443, "example.com", True),
    ("example.com", 443, ".example.com", True),
    ("www.example.com", 443, "example.com", True),
    ("www.example.com", 443, ".example.com", True),
    ("a.b.example.com", 443, "example.com", True),
    ("badexample.com", 443, "example.com", False),
    ("badexample.com", 443, ".example.com", False),
    ("example.com", 443, "www.example.com", False),
    ("EXAMPLE.com", 443, "example.COM", True),
    ("example.com.", 443, "example.com", True),
    ("example.com", 443, "example.com.", True),
    ("example.com", 443, "com", True),
    ("example.com", 443, ".", False),
    ("example.com", 443, "foo, example.com ,bar", True),
    ("example.com", 443, "foo example.com", True),  # curl accepts blanks as separators
    ("example.com", 443, ",,example.com,,", True),
    ("example.com", 443, "*,foo", False),  # '*' counts only as the whole value
    ("example.com", 443, "example.com:443", True),
    ("example.com", 8443, "example.com:443", False),
    ("example.com", 8443, "example.com:8443", True),
    ("sts.amazonaws.com", 443, ".amazonaws.com:443", True),
    ("localhost", 80, "127.0.0.1", False),  # names are never resolved
    ("127.0.0.1", 80, "localhost", False),
    ("127.0.0.1", 80, "127.0.0.1", True),
    ("127.0.0.1", 80, "127.0.0.2", False),
    ("127.0.0.1", 80, "127.0.0.0/8", True),
    ("127.255.0.1", 80, "127.0.0.0/8", True),
    ("128.0.0.1", 80, "127.0.0.0/8", False),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("10.1.2.3", 80, "10.1.2.0/24", True),
    ("10.1.3.3", 80, "10.1.2.0/24", False),
    ("10.1.2.3", 80, "10.1.2.3/32", True),
    ("10.1.2.3", 80, "10.1.2.2/31", True),
    ("10.1.2.4", 80, "10.1.2.2/31", False),
    ("10.1.2.3", 80, "10.1.2.0/0", False),  # curl: /0 means the address alone
    ("10.1.2.0", 80, "10.1.2.0/0", True),
    ("10.1.2.3", 80, "10.1.2.0/33", False),
    ("10.1.2.3", 80, "10.1.2.0/x", False),
    ("10.1.2.3", 80, "10.1.2", False),  # no partial-address suffix matching
    ("10.1.2.3", 80, "2.3", False),
    ("10.1.2.3", 80, "10.1.2.3:80", True),
    ("10.1.2.3", 443, "10.1.2.3:80", False),
    ("::1", 443, "::1", True),
    ("::1", 443, "[::1]", True),
    ("::1", 443, "[::1]:443", True),
    ("::1", 443, "[::1]:80", False),
    ("::1", 443, "::2", False),
    ("::1", 443, "0:0:0:0:0:0:0:1", True),
    ("::1", 443, "127.0.0.1", False),
    ("127.0.0.1", 443, "::1", False),
    ("fd00::1234", 443, "fd00::/8", True),
    ("fd00::1234", 443, "[fd00::]/8", True),
    ("fe80::1", 443, "fd00::/8", False),
    ("2001:db8:abcd:12::1", 443, "2001:db8:abcd:10::/60", True),  # /60: not a multiple of 8
    ("2001:db8:abcd:20::1", 443, "2001:db8:abcd:10::/60", False),
    ("2001:db8::1", 443, "2001:db8::/129", False),
    ("2001:db8::1", 443, "2001:db8::/32", True),
    ("2001:db9::1", 443, "2001:db8::/32", False),
    ("example.com", 443, "10.0.0.0/8", False),
    ("10.0.0.1", 443, "example.com", False),
    ("", 443, "*", False),
]


@pytest.mark.parametrize(("host", "port", "no_proxy", "bypass"), NO_PROXY_CASES)
def test_no_proxy_patterns(host: str, port: int | None, no_proxy: str, bypass: bool) -> None:
    assert bypass_proxy(host, port, no_proxy) is bypass


@pytest.mark.parametrize(
    ("url", "no_proxy", "direct"),
    [
        ("https://[::1]:8443/x", "::1", True),
        ("https://[::1]:8443/x", "[::1]:8443", True),
        ("https://[::1]:8443/x", "[::1]:443", False),
        ("https://127.0.0.1/x", "127.0.0.1:443", True),  # default port of the scheme
        ("http://127.0.0.1/x", "127.0.0.1:80", True),
        ("https://user@example.com/", "example.com", True),
        ("https://rolesanywhere.us-east-1.amazonaws.com/sessions", ".amazonaws.com", True),
        ("https://rolesanywhere.cn-north-1.amazonaws.com.cn/sessions", ".amazonaws.com", False),
    ],
)
def test_no_proxy_from_url(url: str, no_proxy: str, direct: bool) -> None:
    chosen = select_proxy(url, proxy=P, no_proxy=no_proxy)
    assert (chosen is None) is direct


# --- proxy URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://proxy:3128", "http://proxy:3128"),
        ("http://proxy:3128/", "http://proxy:3128"),
        ("proxy:3128", "http://proxy:3128"),
        ("proxy", "http://proxy:1080"),  # curl's default proxy port
        ("http://proxy", "http://proxy:1080"),
        ("https://proxy", "https://proxy:443"),
        ("HTTP://Proxy.Example:3128", "http://proxy.example:3128"),
        ("http://[::1]:3128", "http://[::1]:3128"),
        ("http://10.0.0.1", "http://10.0.0.1:1080"),
        ("  http://proxy:3128  ", "http://proxy:3128"),
    ],
)
def test_normalize(given: str, expected: str) -> None:
    assert normalize_proxy_url(given) == (expected, None)


@pytest.mark.parametrize(
    "bad", ["socks5://proxy:1080", "ftp://proxy", "http://", "http://proxy:99999", "http://[::1"]
)
def test_normalize_refuses(bad: str) -> None:
    with pytest.raises(ProxyConfigError):
        normalize_proxy_url(bad)


def test_env_userinfo_becomes_auth_and_leaves_url() -> None:
    d = decide("https://a.example/", env={"HTTPS_PROXY": "http://u%40x:p%3Aw@proxy:3128"})
    assert d.url == "http://proxy:3128"
    assert d.auth == ProxyCredentials("u@x", "p:w")
    assert "p:w" not in repr(d)
    assert "p%3Aw" not in repr(d.url) and "u%40x" not in d.for_log()


def test_configured_userinfo_is_refused_without_leaking() -> None:
    with pytest.raises(ProxyConfigError) as info:
        decide("https://a.example/", proxy="http://user:s3cret@proxy:3128")
    assert "s3cret" not in str(info.value)
    assert "user" not in str(info.value).split("'")[1]


def test_bypassed_configured_userinfo_not_checked() -> None:
    # the proxy is not used at all for this target: no error for this request
    assert select_proxy("https://a.example/", proxy="http://u:p@proxy:3128", no_proxy="*") is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (None, "none"),
        ("http://proxy:3128", "http://proxy:3128"),
        ("http://user:pass@proxy:3128", "http://proxy:3128"),
        ("http://user@proxy:3128/path?q=secret#f", "http://proxy:3128"),
        ("user:pass@proxy:3128", "http://proxy:3128"),
        ("http://user:p%40ss@[::1]:3128", "http://[::1]:3128"),
        ("https://u:p@proxy", "https://proxy"),
        ("http://u:p@proxy:notaport", "<unparseable proxy URL>"),
        ("http://u:p@", "<unparseable proxy URL>"),
    ],
)
def test_redact(url: str | None, shown: str) -> None:
    assert redact(url) == shown


# --- credentials file ----------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("text", "user", "password"),
    [
        ("alice:s3cret\n", "alice", "s3cret"),
        ("alice:s3cret", "alice", "s3cret"),
        ("alice:pa:ss:word\n", "alice", "pa:ss:word"),
        ("alice:\n", "alice", ""),
        ("\nalice:x y\r\n\n", "alice", "x y"),
    ],
)
def test_credentials_file(tmp_path: Path, text: str, user: str, password: str) -> None:
    auth = load_proxy_credentials(_write(tmp_path / "c", text, 0o600))
    assert (auth.login, auth.password) == (user, password)


def test_credentials_file_0400(tmp_path: Path) -> None:
    assert load_proxy_credentials(_write(tmp_path / "c", "a:b", 0o400)).login == "a"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_credentials_file_mode(tmp_path: Path, mode: int) -> None:
    with pytest.raises(ProxyConfigError, match="chmod 600"):
        load_proxy_credentials(_write(tmp_path / "c", "a:b", mode))


@pytest.mark.parametrize("text", ["", "\n", "nocolon\n", ":password\n", "a:b\nc:d\n"])
def test_credentials_file_content(tmp_path: Path, text: str) -> None:
    with pytest.raises(ProxyConfigError) as info:
        load_proxy_credentials(_write(tmp_path / "c", text, 0o600))
    assert "password" not in str(info.value).replace("user:password", "")


def test_credentials_file_missing_symlink_directory(tmp_path: Path) -> None:
    with pytest.raises(ProxyConfigError, match="does not exist"):
        load_proxy_credentials(tmp_path / "absent")
    target = _write(tmp_path / "real", "a:b", 0o600)
    (tmp_path / "link").symlink_to(target)
    # read_file checks the file it opened: a link to a private file is that file
    assert load_proxy_credentials(tmp_path / "link").login == "a"
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ProxyConfigError, match=r"(?i)is a directory"):
        load_proxy_credentials(tmp_path / "dir")


@pytest.mark.parametrize("url", [
    "proxy:3128", "http://proxy", "HTTPS://proxy:8443", "[::1]:3128", "http://[::1]",
    "socks5://proxy:1080", "http://:99", "http://proxy:bad", "ftp://proxy", "proxy:3128/path",
    "u:p@proxy:3128", "http://u@proxy", "  http://proxy:3128  ", "http://proxy:99999",
])
def test_the_config_and_the_upstream_read_a_proxy_url_alike(url: str) -> None:
    """One rule: a config value is accepted exactly when the upstream can use it as is."""
    try:
        _, auth = normalize_proxy_url(url)
        usable = auth is None
    except ProxyConfigError:
        usable = False
    try:
        check_proxy_url(url)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == usable
