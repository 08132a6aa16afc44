"""The CLI's REST side: a small client whose failures are one-line errors with exit codes."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from bus.messages import is_task_id

EXIT_OK = 0
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_GATEWAY = 5
EXIT_ALREADY_FINISHED = 7
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130
ID_PREFIX = re.compile(r"^[0-9a-f-]{1,35}$")


class CliError(Exception):
    """An expected failure: printed as one line, mapped to an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- HTTP ------------------------------------------------------------------------------------


class Api:
    """A thin REST client that turns transport and HTTP failures into :class:`CliError`."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.has_token = bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, what: str = "", **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot reach the gateway at {self.url} ({_reason(exc)}); is the stack running "
                "(make run)? Set --url or METASTREAM_URL to point elsewhere.",
                EXIT_UNREACHABLE,
            ) from exc
        except httpx.TimeoutException as exc:
            raise CliError(
                f"the gateway at {self.url} did not answer in time", EXIT_UNREACHABLE
            ) from exc
        except httpx.TransportError as exc:
            raise CliError(
                f"talking to {self.url} failed: {_reason(exc)}", EXIT_UNREACHABLE
            ) from exc
        if resp.status_code < 400:
            return resp
        detail = _detail(resp)
        if resp.status_code == 404:
            if detail == "Not Found":  # FastAPI's answer for a route it does not have
                raise CliError(f"this gateway has no {method} {path} endpoint", EXIT_NOT_FOUND)
            raise CliError(f"{what or 'resource'} not found ({detail})", EXIT_NOT_FOUND)
        if resp.status_code == 404 and "/files/" in path:
            raise CliError(f"{what or 'file'} not found", EXIT_NOT_FOUND)
        if resp.status_code in (401, 403):
            raise CliError(self.auth_problem(), EXIT_GATEWAY)
        if resp.status_code == 422:
            raise CliError(f"invalid request: {_invalid(resp)}", EXIT_GATEWAY)
        raise CliError(f"{method} {path} failed: HTTP {resp.status_code}: {detail}", EXIT_GATEWAY)

    def auth_problem(self) -> str:
        """A refused request, told apart: no token given, or the one given is wrong."""
        if self.has_token:
            return (
                f"not authorized: the gateway at {self.url} refused the API token given "
                "(--token or METASTREAM_API_TOKEN): wrong token?"
            )
        return (
            f"not authorized: the gateway at {self.url} needs an API token; pass --token or "
            "set METASTREAM_API_TOKEN"
        )

    def task_id(self, given: str) -> str:
        """A full task id from a full id or a unique prefix of a recent task's id."""
        given = given.strip().lower()
        if is_task_id(given):
            return given
        if not ID_PREFIX.match(given):
            raise CliError(f"not a task id: {given!r}", EXIT_USAGE)
        tasks = self.call("GET", "/api/tasks", params={"limit": 200}).json()["tasks"]
        found = [t["id"] for t in tasks if t["id"].startswith(given)]
        if not found:
            raise CliError(f"no recent task id starts with {given!r}", EXIT_NOT_FOUND)
        if len(found) > 1:
            raise CliError(f"{given!r} matches {len(found)} tasks; give more of the id", EXIT_USAGE)
        return found[0]


def _invalid(resp: httpx.Response) -> str:
    """A 422's field errors as one line: ``n_round: Input should be ... ; foo: unknown option``."""
    try:
        errors = resp.json().get("detail")
    except (ValueError, AttributeError):
        return resp.text[:200]
    if not isinstance(errors, list):
        return str(errors)[:300]
    parts = []
    for err in errors:
        if not isinstance(err, dict):
            continue
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        if err.get("type") == "extra_forbidden":
            parts.append(f"{field}: unknown option")
        else:
            parts.append(f"{field}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or resp.text[:200]


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text or type(exc).__name__


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        d = body["detail"]
        return d if isinstance(d, str) else json.dumps(d)[:300]
    return resp.text[:200]
