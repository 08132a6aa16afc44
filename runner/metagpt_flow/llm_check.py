"""A cheap check of a configured LLM before MetaGPT starts: ``GET {base}/models``.

A wrong host, port or key otherwise shows only after MetaGPT's own retries, minutes later and
deep in a traceback; this fails the task in seconds with the host in the message. It is one
request at task start, separate from any watchdog on the calls that follow.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from runner.metagpt_flow.events import FlowError

CHECK_TIMEOUT_S = 5.0


class LLMUnavailable(FlowError):
    """The configured LLM did not answer, or refused us, at task start."""


def host_of(base_url: str) -> str:
    """``scheme://host:port`` of a URL, without credentials or path."""
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def check_llm(
    base_url: str, api_key: str | None, model: str | None, timeout: float = CHECK_TIMEOUT_S
) -> str:
    """Raise LLMUnavailable unless the LLM answers; returns a note for the task's log."""
    host = host_of(base_url)
    url = base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise LLMUnavailable(
            f"the LLM at {host} did not answer GET /models within {timeout:g} s "
            "(METASTREAM_LLM_BASE_URL)"
        ) from None
    except httpx.HTTPError as exc:
        reason = "connection refused" if "refused" in str(exc).lower() else str(exc)
        raise LLMUnavailable(
            f"cannot reach the LLM at {host}: {reason} (METASTREAM_LLM_BASE_URL)"
        ) from None
    if resp.status_code in (401, 403):
        raise LLMUnavailable(
            f"the LLM at {host} refused the API key (HTTP {resp.status_code}; "
            "METASTREAM_LLM_API_KEY)"
        )
    if resp.status_code >= 500:
        raise LLMUnavailable(f"the LLM at {host} answered GET /models with HTTP {resp.status_code}")
    if resp.status_code != 200:
        # Some OpenAI-compatible servers have no model list: the host answered, that is enough.
        return f"LLM at {host} answers (no model list: HTTP {resp.status_code})"
    offered = _model_ids(resp)
    if model and offered and model not in offered and f"{model}:latest" not in offered:
        shown = ", ".join(sorted(offered)[:10])
        raise LLMUnavailable(
            f"the LLM at {host} does not offer model {model!r} (METASTREAM_LLM_MODEL); "
            f"it offers: {shown}"
        )
    return f"LLM at {host} answers ({len(offered)} models)"


def _model_ids(resp: httpx.Response) -> set[str]:
    try:
        data = resp.json().get("data")
    except (ValueError, AttributeError):
        return set()
    if not isinstance(data, list):
        return set()
    return {str(m["id"]) for m in data if isinstance(m, dict) and "id" in m}
