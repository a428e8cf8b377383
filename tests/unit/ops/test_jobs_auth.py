"""Ray token discovery for the Jobs client (no cluster needed)."""

from __future__ import annotations

import pytest

from bratslab.jobs import auth


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh HOME with no token and no token-related environment."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    for key in (auth.TOKEN_ENV, auth.TOKEN_PATH_ENV, auth.AUTH_MODE_ENV):
        monkeypatch.delenv(key, raising=False)
    return h


def _write_default_token(home, value="file-token"):
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(value + "\n")


def test_no_token_anywhere(home):
    assert auth.find_token() is None
    assert auth.auth_headers() == {}
    msg = auth.missing_token_message("http://127.0.0.1:8265", "Unauthorized: Missing token")
    assert "requires token authentication" in msg
    assert "no token was found" in msg
    assert str(home / ".ray" / "auth_token") in msg
    assert "RAY_AUTH_TOKEN" in msg and "Unauthorized: Missing token" in msg


def test_default_file_is_found_and_sent_as_bearer(home):
    _write_default_token(home)
    token = auth.find_token()
    assert token.value == "file-token" and token.source == str(home / ".ray" / "auth_token")
    assert auth.auth_headers() == {"Authorization": "Bearer file-token"}
    # The message for a rejected token names where it came from, never the token itself.
    msg = auth.missing_token_message("http://x:8265")
    assert "was rejected" in msg and "file-token" not in msg


def test_precedence_env_then_path_then_default(home, tmp_path, monkeypatch):
    _write_default_token(home)
    other = tmp_path / "tok"
    other.write_text("path-token")
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, str(other))
    assert auth.find_token().value == "path-token"
    monkeypatch.setenv(auth.TOKEN_ENV, "env-token")
    assert auth.find_token().value == "env-token"
    assert auth.find_token().source == "$RAY_AUTH_TOKEN"


def test_token_path_to_missing_file_is_an_error(home, tmp_path, monkeypatch):
    _write_default_token(home)  # Ray does not fall back either
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(auth.AuthTokenError, match="missing: no such file"):
        auth.find_token()


def test_auth_mode_disabled_sends_nothing(home, monkeypatch):
    _write_default_token(home)
    monkeypatch.setenv(auth.AUTH_MODE_ENV, "disabled")
    assert auth.auth_headers() == {}
