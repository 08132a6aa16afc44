"""Settings of the supervisor and its task processes: supervision, limits, sandbox, the LLM."""

from __future__ import annotations

from typing import Annotated, Literal

from core.options import DisconnectMode
from core.settings_base import env
from core.settings_stack import OperatingSettings


class SupervisorSettings(OperatingSettings, frozen=True, kw_only=True):
    """How the supervisor runs, watches, stops and limits task processes."""

    python: Annotated[
        str,
        env(
            "METASTREAM_TASK_PYTHON",
            "interpreter of cold-started task processes",
            shown="the running one",
        ),
    ] = ""
    max_running: Annotated[
        int, env("METASTREAM_MAX_RUNNING", "tasks running at once; the rest wait as `QUEUED`", ge=1)
    ] = 4
    heartbeat_interval: Annotated[
        float, env("METASTREAM_HEARTBEAT_INTERVAL", "seconds between a task's heartbeats", gt=0)
    ] = 1.0
    heartbeat_timeout: Annotated[
        float,
        env(
            "METASTREAM_HEARTBEAT_TIMEOUT",
            "seconds of silence after which a task is killed and `FAILED`",
            gt=0,
        ),
    ] = 5.0
    node_ttl: Annotated[
        float,
        env(
            "METASTREAM_NODE_TTL",
            "PostgreSQL, several nodes: seconds without a node's heartbeat before another node "
            "fails its running tasks and runs its queued ones",
            gt=0,
        ),
    ] = 15.0
    stop_ask_timeout: Annotated[
        float,
        env(
            "METASTREAM_STOP_ASK_TIMEOUT", "stop sequence: seconds between SIGINT and SIGTERM", ge=0
        ),
    ] = 2.0
    stop_term_timeout: Annotated[
        float,
        env(
            "METASTREAM_STOP_TERM_TIMEOUT",
            "stop sequence: seconds between SIGTERM and SIGKILL",
            ge=0,
        ),
    ] = 3.0
    disconnect_policy: Annotated[
        DisconnectMode,
        env(
            "METASTREAM_DISCONNECT_POLICY",
            "server default of the per-task `disconnect_policy` (`continue`, `kill`, `grace`)",
        ),
    ] = "continue"
    disconnect_grace: Annotated[
        float,
        env("METASTREAM_DISCONNECT_GRACE", "server default of the per-task `grace_seconds`", ge=0),
    ] = 30.0
    lease_ttl: Annotated[
        float,
        env(
            "METASTREAM_LEASE_TTL",
            "gateways renew a watch lease per task every third of this; an expired lease "
            "(dead gateway) counts as a disconnect",
            gt=0,
        ),
    ] = 3.0
    task_timeout: Annotated[
        float,
        env(
            "METASTREAM_TASK_TIMEOUT",
            "server default wall-clock limit in seconds (0 = none); per task: `timeout_seconds`",
            ge=0,
        ),
    ] = 0.0
    task_memory_mb: Annotated[
        float,
        env(
            "METASTREAM_TASK_MEMORY_MB",
            "server default memory limit of a task's whole tree in MB (0 = none); per task: "
            "`memory_limit_mb`",
            ge=0,
        ),
    ] = 0.0
    task_max_log_bytes: Annotated[
        int,
        env(
            "METASTREAM_TASK_MAX_LOG_BYTES",
            "bytes of events one task run may log; past it the task ends `FAILED` naming the "
            "limit (0 = none)",
            ge=0,
        ),
    ] = 1 << 30
    warm: Annotated[
        bool,
        env(
            "METASTREAM_WARM",
            "fork task processes from a pre-imported zygote (warm path); `0` = a fresh "
            "interpreter per task",
        ),
    ] = True
    warm_metagpt: Annotated[
        bool,
        env("METASTREAM_WARM_METAGPT", "the zygote pre-imports MetaGPT too (read by the zygote)"),
    ] = True
    test_hooks: Annotated[
        bool,
        env(
            "METASTREAM_TEST_HOOKS",
            "`1` lets a synthetic task run `run_python` code in its process: **tests only**",
        ),
    ] = False


class SandboxSettings(SupervisorSettings, frozen=True, kw_only=True):
    """The task sandbox (runner/sandbox.py, docs/security.md) and a task's rlimits."""

    sandbox: Annotated[
        Literal["auto", "uid", "landlock", "off"],
        env(
            "METASTREAM_SANDBOX",
            "task sandbox: `uid` (a uid per task; needs root), `landlock`, `off`; `auto` = "
            "`uid` as root, else `landlock` (see Security model)",
        ),
    ] = "auto"
    sandbox_uid_base: Annotated[
        int,
        env(
            "METASTREAM_SANDBOX_UID_BASE", "first uid (and gid) given to tasks in `uid` mode", ge=1
        ),
    ] = 200_000
    sandbox_uid_count: Annotated[
        int, env("METASTREAM_SANDBOX_UID_COUNT", "how many uids `uid` mode may use", ge=1)
    ] = 10_000
    task_network: Annotated[
        Literal["open", "restricted"],
        env(
            "METASTREAM_TASK_NETWORK",
            "`restricted`: a task may open TCP connections only to the ports of the database, "
            "the LLM endpoint and a tcp bus (Landlock ABI >= 4; any host on those ports); "
            "`open`: anywhere (generated code may need to fetch things)",
        ),
    ] = "open"
    task_nofile: Annotated[
        int, env("METASTREAM_TASK_NOFILE", "a task's open files (RLIMIT_NOFILE)", ge=16)
    ] = 1024
    task_nproc: Annotated[
        int,
        env(
            "METASTREAM_TASK_NPROC",
            "a task's processes/threads (RLIMIT_NPROC; in `landlock` mode, where the uid is "
            "the user's, this many more than the machine runs at the task's start; none as root)",
            ge=1,
        ),
    ] = 512
    task_address_space_mb: Annotated[
        int,
        env(
            "METASTREAM_TASK_ADDRESS_SPACE_MB",
            "a task's address space in MB (RLIMIT_AS; MetaGPT reserves a few GB; 0 = none)",
            ge=0,
        ),
    ] = 16_384
    task_cpu_seconds: Annotated[
        int,
        env("METASTREAM_TASK_CPU_SECONDS", "a task's CPU seconds (RLIMIT_CPU; 0 = none)", ge=0),
    ] = 0


class LlmSettings(SandboxSettings, frozen=True, kw_only=True):
    """The LLM the tasks' MetaGPT talks to (unset: the offline scripted LLM)."""

    llm_base_url: Annotated[
        str,
        env(
            "METASTREAM_LLM_BASE_URL",
            "a real OpenAI-compatible LLM, see [Use a real LLM](#use-a-real-llm); "
            "unset = the built-in offline scripted LLM",
        ),
    ] = ""
    llm_api_key: Annotated[str, env("METASTREAM_LLM_API_KEY", "that LLM's API key")] = ""
    llm_model: Annotated[str, env("METASTREAM_LLM_MODEL", "that LLM's model name")] = ""
    llm_timeout: Annotated[
        float,
        env(
            "METASTREAM_LLM_TIMEOUT",
            "read timeout of one LLM call in seconds (between streamed chunks); connecting "
            "has `METASTREAM_LLM_CONNECT_TIMEOUT`",
            gt=0,
        ),
    ] = 60.0
    llm_connect_timeout: Annotated[
        float,
        env("METASTREAM_LLM_CONNECT_TIMEOUT", "connect timeout of LLM calls in seconds", gt=0),
    ] = 5.0
    llm_stall_timeout: Annotated[
        float,
        env(
            "METASTREAM_LLM_STALL_TIMEOUT",
            "a task whose LLM makes no progress (no call started, no text streamed, no call "
            'finished) for this many seconds ends `FAILED` "LLM stalled" (0 = never)',
            ge=0,
        ),
    ] = 180.0
    metagpt_log_level: Annotated[
        str,
        env(
            "METASTREAM_METAGPT_LOG_LEVEL",
            "level of MetaGPT's own (loguru) log in task logs (read by runner/metagpt_flow)",
        ),
    ] = "WARNING"
