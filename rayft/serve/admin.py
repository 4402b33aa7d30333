"""Admin routes' access control and request bodies (free of Ray).

Admin routes need ``Authorization: Bearer <token>``. The server keeps only the token's sha256; with no token
configured the admin routes are disabled (403), so a server is never left open by accident.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import BaseModel, ConfigDict, Field

from rayft.serve.api import ServeError

from rayft.options import ADMIN_TOKEN_VAR as TOKEN_ENV
from rayft.options import admin_token


def token_digest(token: str | None) -> str | None:
    """sha256 hex of an admin token (``None`` or empty: admin routes disabled)."""
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def configured_digest(token: str | None = None) -> str | None:
    """The digest of ``token``, else of ``$RAYFT_ADMIN_TOKEN``, else None."""
    return token_digest(token or admin_token())


def check_bearer(authorization: str | None, digest: str | None) -> None:
    """Accept the request only with the right bearer token.

    Raises:
        ServeError: 403 if admin routes are disabled or the token is wrong, 401 if none was sent.
    """
    if digest is None:
        raise ServeError(403, f"admin routes are disabled on this server: start it with an admin token "
                              f"(--admin-token, or ${TOKEN_ENV})", "permission_error", "admin_disabled")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ServeError(401, "admin routes need the header 'Authorization: Bearer <token>'",
                         "authentication_error", "missing_token")
    if not hmac.compare_digest(token_digest(token.strip()) or "", digest):
        raise ServeError(403, "the admin token is not valid", "permission_error", "invalid_token")


class RegisterRequest(BaseModel):
    """``POST /admin/adapters``: serve a stored result again (and optionally load it on a replica now)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=1024)
    warm: bool = False


class AliasRequest(BaseModel):
    """``PUT /admin/aliases/{alias}``: point the alias at a served model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=1024)
