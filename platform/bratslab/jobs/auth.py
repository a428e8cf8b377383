"""Ray token authentication for the Jobs client, without ceremony.

Since Ray 2.52 a cluster can require a static bearer token (``RAY_AUTH_MODE=token``) on every
dashboard and control-plane request; in Ray 2.60 a plain ``ray start --head`` turns it on and
writes the token to ``~/.ray/auth_token``. Ray's own HTTP client only attaches the token when
*its* process runs with ``RAY_AUTH_MODE=token``, which users forget. We look the token up the same
way Ray does and send it ourselves as an ``Authorization: Bearer`` header, so a client works
against token and no-token clusters alike and nothing global (env, RayConfig) is mutated.

Token sources, in Ray's order of precedence (docs.ray.io, "Token Authentication"):
``RAY_AUTH_TOKEN`` (the token itself), ``RAY_AUTH_TOKEN_PATH`` (a file holding it),
``~/.ray/auth_token``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"


class AuthTokenError(RuntimeError):
    """The cluster wants a token that we do not have (or ours is wrong)."""


@dataclass(frozen=True)
class AuthToken:
    """A Ray auth token and where it was found (for messages; never print ``value``)."""

    value: str
    source: str


def default_token_path() -> Path:
    """``~/.ray/auth_token``, where ``ray start --head`` and ``ray get-auth-token --generate``
    write the token."""
    return Path.home() / ".ray" / "auth_token"


def find_token() -> AuthToken | None:
    """The token in force for this process, or None when there is none.

    Raises:
        AuthTokenError: ``RAY_AUTH_TOKEN_PATH`` names a missing or empty file (Ray itself
            treats that as fatal rather than silently falling back, and so do we).
    """
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return AuthToken(value, f"${TOKEN_ENV}")
    explicit = os.environ.get(TOKEN_PATH_ENV, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        text = path.read_text().strip() if path.is_file() else ""
        if not text:
            raise AuthTokenError(f"{TOKEN_PATH_ENV}={explicit}: no such file, or it is empty")
        return AuthToken(text, str(path))
    path = default_token_path()
    if path.is_file():
        text = path.read_text().strip()
        if text:
            return AuthToken(text, str(path))
    return None


def auth_headers() -> dict[str, str]:
    """HTTP headers authenticating this client to a token-protected Ray dashboard.

    Empty when ``RAY_AUTH_MODE=disabled`` is set explicitly or no token exists; a cluster that
    does require a token then answers 401, which :func:`missing_token_message` explains.
    """
    if os.environ.get(AUTH_MODE_ENV, "").lower() == "disabled":
        return {}
    token = find_token()
    return {"Authorization": f"Bearer {token.value}"} if token else {}


def missing_token_message(address: str, status_text: str = "") -> str:
    """What to do when the cluster at ``address`` rejected our request for want of a token."""
    token = None
    try:
        token = find_token()
    except AuthTokenError as e:
        return f"{address}: {e}"
    if token is None:
        found = (
            f"no token was found (${TOKEN_ENV} and ${TOKEN_PATH_ENV} are unset and "
            f"{default_token_path()} does not exist)"
        )
    else:
        found = f"the token from {token.source} was rejected"
    return (
        f"The Ray cluster at {address} requires token authentication and {found}.\n"
        f"Copy the head node's ~/.ray/auth_token to {default_token_path()}, or export "
        f"{TOKEN_ENV}=<token> (on KubeRay: the `auth_token` key of the cluster's token Secret, "
        "see infra/README.md)."
        + (f"\nServer said: {status_text.strip()}" if status_text.strip() else "")
    )
