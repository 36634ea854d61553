"""Dependencies as ``Annotated`` aliases: a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from app.api.throttle import AuthThrottle
from app.core.net import client_address
from app.db.models import ApiKey
from app.db.session import release, session_scope
from app.services.apikeys import authenticate
from app.services.context import ServiceContext
from app.services.errors import (
    AuthenticationError,
    NotReadyError,
    PermissionDeniedError,
    TooManyAuthFailuresError,
)

API_KEY_HEADER = "X-API-Key"
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)


def get_ctx(request: Request) -> ServiceContext:
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        raise NotReadyError("the service is starting")
    return ctx  # type: ignore[no-any-return]


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]


def get_session(ctx: CtxDep) -> Iterator[Session]:
    """The request's session: it holds a pooled connection only from a statement to the next
    commit or rollback (``release``), not for the whole request."""
    with session_scope(ctx.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def request_address(request: Request) -> str:
    """The client's address: the peer's, or from X-Forwarded-For when the peer is one of the
    trusted proxies (``TRUSTED_PROXIES``)."""
    settings = request.app.state.settings
    peer = request.client.host if request.client else None
    return client_address(
        peer, request.headers.getlist("x-forwarded-for"), settings.trusted_proxies
    )


def get_api_key(
    request: Request,
    session: SessionDep,
    key: Annotated[str | None, Security(_api_key_header)],
) -> ApiKey:
    """The one place keys are checked, and failed keys counted per client address
    (``app.api.throttle``): a locked-out address that presents a key gets 429, unchecked."""
    key_row = _check_key(request, session, key)
    release(session)  # the route takes a connection again when it needs one
    return key_row


def _check_key(request: Request, session: Session, key: str | None) -> ApiKey:
    throttle: AuthThrottle | None = getattr(request.app.state, "auth_throttle", None)
    if throttle is None or not key:  # no key: nothing to guess, a plain 401
        return authenticate(session, key)
    address = request_address(request)
    retry_after = throttle.refuse(address)
    if retry_after is not None:
        raise TooManyAuthFailuresError(
            f"too many failed API keys from your address: keys are not checked for "
            f"{retry_after} s (Retry-After); try again then with a valid key",
            retry_after,
        )
    try:
        return authenticate(session, key)
    except AuthenticationError:
        throttle.failed(address)
        raise


ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]


def require_role(*roles: str) -> Callable[[ApiKey], ApiKey]:
    def check(key: ApiKeyDep) -> ApiKey:
        if key.role not in roles:
            raise PermissionDeniedError(
                f"the {key.role} role may not do this (needs: {' or '.join(roles)})"
            )
        return key

    return check


ReaderDep = Annotated[ApiKey, Depends(require_role("admin", "operator", "investigator"))]
InvestigatorDep = Annotated[ApiKey, Depends(require_role("admin", "investigator"))]
OperatorDep = Annotated[ApiKey, Depends(require_role("admin", "operator"))]
AdminDep = Annotated[ApiKey, Depends(require_role("admin"))]


def single_valued(
    *, form: tuple[str, ...] = (), query: tuple[str, ...] = ()
) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing (422) a field that must come once but came several times.

    FastAPI would silently use one of the values (a second ``image`` part was stored, the first
    dropped). The form is already parsed (and cached on the request) when this runs.
    """

    async def check(request: Request) -> None:
        counts: list[tuple[str, str, int]] = []
        if query:
            counts += [("query", n, len(request.query_params.getlist(n))) for n in query]
        if form:
            parsed = await request.form()
            counts += [("body", n, len(parsed.getlist(n))) for n in form]
        errors: list[dict[str, Any]] = [
            {
                "loc": (where, name),
                "msg": f"sent {count} times; send it once",
                "type": "repeated_field",
                "input": None,
            }
            for where, name, count in counts
            if count > 1
        ]
        if errors:
            raise RequestValidationError(errors)

    return check
