"""What a user sees when the stack starts: the banner, quiet logs, the bus endpoint once."""

from __future__ import annotations

import httpx

from tests.helpers import poll_for


def test_banner_and_quiet_logs(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s = stack_factory(env={"METASTREAM_LLM_BASE_URL": "", "METASTREAM_ACCESS_LOG": ""})
    assert httpx.get(f"{s.url}/api/tasks", timeout=10).status_code == 200
    gateway = s.log("gateway")
    assert f"Web UI: http://127.0.0.1:{s.port}/ · CLI: " in gateway
    assert "metastream · first tasks start cold for ~" in gateway
    assert "LLM: none configured, every MetaGPT task runs on the offline scripted LLM" in gateway
    assert '"GET /api/tasks' not in gateway  # no access log by default
    assert s.log("bus").count("subscribers connect to ipc://") == 1


def test_access_log_on_request(stack_factory) -> None:  # type: ignore[no-untyped-def]
    s = stack_factory(env={"METASTREAM_ACCESS_LOG": "1"})
    assert httpx.get(f"{s.url}/api/tasks", timeout=10).status_code == 200
    poll_for(lambda: '"GET /api/tasks HTTP/1.1" 200' in s.log("gateway"), 5, what="access line")
