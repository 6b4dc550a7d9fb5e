"""The HTTP calls of the command line, and the three ways one can go wrong.

Every failure becomes a `Failure` with the exit code the contract gives it: 1 when the service
refuses (a 4xx), 2 when what the user gave cannot even be sent, 3 when the service cannot be
reached or could not answer (connection refused, timeout, DNS, a 5xx).
"""

import getpass
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

REFUSED = 1
USAGE = 2
UNREACHABLE = 3

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 10.0
UNKNOWN_OPERATOR = "unknown"
MAX_OPERATOR = 100  # the API's limit on X-Operator


class Failure(Exception):
    """What went wrong, in one line, and the exit code it means. `body` is the service's
    JSON answer when there was one (printed as is under --json)."""

    def __init__(self, code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.body = body


def operator_name() -> str:
    """The user's login name as the API takes it in X-Operator: 1-100 printable ASCII
    characters. Anything else is percent-encoded; no name at all is 'unknown'."""
    try:
        name = getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (a bare container)
        return UNKNOWN_OPERATOR
    if not name:
        return UNKNOWN_OPERATOR
    if not all(" " <= ch <= "~" for ch in name):
        name = urllib.parse.quote(name, safe="")
    return name[:MAX_OPERATOR].strip() or UNKNOWN_OPERATOR


@dataclass(frozen=True)
class Target:
    """Where the service is and how to talk to it."""

    url: str
    token: str | None
    timeout: float


class Client:
    """The saga API over HTTP. Each method returns the decoded JSON of a 2xx answer or
    raises `Failure`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        parsed = urllib.parse.urlsplit(target.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise Failure(USAGE, f"not an http(s) URL of the service: {target.url!r}")
        headers = {"Accept": "application/json", "User-Agent": "saga-cli"}
        if target.token:
            if not target.token.isascii() or not target.token.isprintable():
                raise Failure(USAGE, "API_TOKEN must be printable ASCII")
            headers["Authorization"] = f"Bearer {target.token}"
        self._http = httpx.Client(
            base_url=target.url.rstrip("/"), headers=headers, timeout=target.timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_orders(
        self,
        *,
        state: str | None = None,
        limit: int | None = None,
        attention: bool | None = None,
        search: str | None = None,
        before: str | None = None,
        coordination: str | None = None,
    ) -> Any:
        params: dict[str, str | int] = {}
        if state is not None:
            params["state"] = state
        if limit is not None:
            params["limit"] = limit
        if attention is not None:
            params["attention"] = "true" if attention else "false"
        if search is not None:
            params["search"] = search
        if before is not None:
            params["before"] = before
        if coordination is not None:
            params["coordination"] = coordination
        return self._call("GET", "/orders", params=params)

    def order(self, order_id: str) -> Any:
        return self._call("GET", f"/orders/{order_id}")

    def act(self, order_id: str, action: str, reason: str | None, operator: str) -> Any:
        """POST /orders/{id}/{action}: approve, reject, cancel or retry-compensation."""
        body = None if reason is None else {"reason": reason}
        return self._call(
            "POST",
            f"/orders/{order_id}/{action}",
            json=body,
            headers={"X-Operator": operator},
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        where = self.target.url
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Failure(
                UNREACHABLE,
                f"the service at {where} did not answer within {self.target.timeout:g} s",
            ) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            raise Failure(USAGE, f"not a usable URL of the service: {where} ({error})") from None
        except httpx.HTTPError as error:
            raise Failure(
                UNREACHABLE, f"cannot reach the service at {where}: {_reason(error)}"
            ) from None
        return answer_of(response, where)


def answer_of(response: httpx.Response, where: str) -> Any:
    """The JSON of a 2xx answer; else the `Failure` its status means."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if response.is_success:
        if body is None:
            raise Failure(
                UNREACHABLE, f"{where} answered {status} without JSON: is it the saga service?"
            )
        return body
    if body is not None:
        detail = describe_detail(body)
    else:
        detail = f"{_snippet(response.text)} (not the saga API's answer: is {where} right?)"
    if 400 <= status < 500:
        message = f"refused ({status}): {detail}"
        if status == 401:
            message += " (set API_TOKEN to the service's token)"
        raise Failure(REFUSED, message, body)
    raise Failure(UNREACHABLE, f"the service could not answer ({status}): {detail}", body)


def describe_detail(body: Any) -> str:
    """The API's `detail` in one line: a string as is; FastAPI's validation errors (a
    list of {loc, msg}) as 'where: what; where: what'."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, str):
        return _one_line(detail)
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                loc = error.get("loc") or []
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else str(loc)
                msg = str(error.get("msg", error))
                parts.append(f"{where}: {msg}" if where else msg)
            else:
                parts.append(str(error))
        return _one_line("; ".join(parts))
    return _one_line(str(detail))


def _reason(error: httpx.HTTPError) -> str:
    """Why a connection failed, without the chain of library exceptions."""
    text = str(error) or type(error).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return _one_line(text)


def _snippet(text: str) -> str:
    text = _one_line(text)
    return (text[:200] + "…") if len(text) > 200 else (text or "no message")


def _one_line(text: str) -> str:
    return " ".join(text.split())
