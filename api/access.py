"""Who may change state: with API_TOKEN set, the calls that steer sagas and the simulated
services (every PUT, and every POST other than POST /orders) need `Authorization: Bearer
<token>`. Reading, and placing an order, stay open.

Without API_TOKEN nothing is checked (the default, for a service bound to 127.0.0.1).
"""

import logging
import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.schemas import Problem
from runtime.settings import Settings, get_settings

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="The API_TOKEN the server was started with",
)


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless API_TOKEN is unset or the request carries it as a Bearer token."""
    expected = _settings(request).api_token
    if expected is None:
        return
    if credentials is None:
        raise _unauthorized("this call needs 'Authorization: Bearer <API_TOKEN>'")
    # Bytes on both sides: a header may hold any latin-1 character, and compare_digest
    # refuses non-ASCII str. Header values reach us decoded as latin-1.
    given = credentials.credentials.encode("latin-1")
    if not secrets.compare_digest(given, expected.get_secret_value().encode()):
        raise _unauthorized("the bearer token is not valid")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


# For the decorator of each protected route: the check, and the 401 it can answer.
PROTECTED: dict[str, Any] = {
    "dependencies": [Depends(require_token)],
}
UNAUTHORIZED_RESPONSE: dict[int | str, dict[str, Any]] = {
    401: {
        "model": Problem,
        "description": "API_TOKEN is set and the request lacks it or carries another token",
        "headers": {
            "WWW-Authenticate": {
                "description": "Always `Bearer`",
                "schema": {"type": "string"},
            }
        },
    }
}


def describe(app: FastAPI, settings: Settings) -> None:
    """/openapi.json and /docs as this server is configured: without API_TOKEN the protected
    calls are open, so their security requirement and their 401 are left out."""
    if settings.api_token is not None:
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            for methods in spec.get("paths", {}).values():
                for operation in methods.values():
                    if operation.pop("security", None) is not None:
                        operation.get("responses", {}).pop("401", None)
            spec.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way


def warn_if_exposed(settings: Settings) -> None:
    """A log line when the API listens beyond this machine with nothing guarding it."""
    if settings.host not in LOOPBACK_HOSTS and settings.api_token is None:
        log.warning(
            "listening on %s without API_TOKEN: anyone who can reach it can approve, cancel "
            "and flip fault switches",
            settings.host,
        )
