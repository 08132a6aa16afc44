"""Settings (core.settings): declared once, loaded strictly, documented by the README table."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from core import settings
from core.settings import INTERNAL_ENV, Secrets, declarations, gateway_port, load
from core.settings_table import markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_generated_from_the_declarations() -> None:
    text = README.read_text()
    table = text.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert table == markdown_table(), (
        "regenerate it: python -m core.settings_table --write README.md"
    )


def test_every_variable_read_is_declared_once() -> None:
    names = [meta["env"] for _f, _h, meta, _d in declarations()]
    assert len(names) == len(set(names))
    assert all(meta["doc"] for _f, _h, meta, _d in declarations())
    # No module of the stack reads a METASTREAM_ variable that is not declared.
    root = README.parent
    read: set[str] = set()
    for package in ("bus", "store", "runner", "gateway", "core"):
        for path in (root / package).rglob("*.py"):
            read |= set(re.findall(r"\"(METASTREAM_[A-Z_]+)\"", path.read_text()))
    assert read - set(names) <= {"METASTREAM_LLM_", *INTERNAL_ENV}, read - set(names)


def test_defaults_and_derived_values(tmp_path: Path) -> None:
    cfg = load({"METASTREAM_HOME": str(tmp_path)})
    assert cfg.home == tmp_path.resolve() and cfg.port == 8000 and cfg.max_running == 4
    assert cfg.db_url == f"sqlite:///{tmp_path.resolve()}/data/metastream.db"
    assert cfg.bus_sub.startswith("ipc://") and cfg.bus_sub.endswith("bus-out.sock")
    assert cfg.python == sys.executable and cfg.node and cfg.warm and not cfg.insecure
    assert cfg.api_tokens == Secrets() and cfg.allowed_origins == ()


def test_values_are_typed_and_lists_split() -> None:
    cfg = load(
        {
            "METASTREAM_MAX_RUNNING": "7",
            "METASTREAM_HEARTBEAT_TIMEOUT": "2.5",
            "METASTREAM_WARM": "off",
            "METASTREAM_INSECURE": "yes",
            "METASTREAM_API_TOKEN": " tok-1x, ,tok-2y ",
            "METASTREAM_ALLOWED_ORIGINS": "http://x:1,http://y:2",
            "METASTREAM_DISCONNECT_POLICY": "grace",
            "METASTREAM_MAX_BODY_BYTES": "",  # empty: the default
        }
    )
    assert (cfg.max_running, cfg.heartbeat_timeout) == (7, 2.5)
    assert cfg.warm is False and cfg.insecure is True
    assert cfg.api_tokens.values == ("tok-1x", "tok-2y") and "tok-" not in repr(cfg)
    assert cfg.allowed_origins == ("http://x:1", "http://y:2")
    assert cfg.disconnect_policy == "grace" and cfg.max_body_bytes == 1_048_576
    assert settings.SECRET_ENV == ("METASTREAM_API_TOKEN", "METASTREAM_TICKET_SECRET")


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("METASTREAM_MAX_RUNNING", "four", "METASTREAM_MAX_RUNNING: Expected `int`"),
        ("METASTREAM_MAX_RUNNING", "0", "METASTREAM_MAX_RUNNING: Expected `int` >= 1"),
        ("METASTREAM_HEARTBEAT_INTERVAL", "fast", "METASTREAM_HEARTBEAT_INTERVAL: Expected"),
        ("METASTREAM_DISCONNECT_POLICY", "sometimes", "METASTREAM_DISCONNECT_POLICY: Invalid"),
        ("METASTREAM_WARM", "maybe", "METASTREAM_WARM must be one of"),
        ("PORT", "70000", "PORT: Expected `int` <= 65535"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load({name: raw})


def test_gateway_port_sees_through_honchos_default_only() -> None:
    under_honcho = {"HONCHO_PROCESS_NAME": "gateway.1"}

    def never() -> bool:
        raise AssertionError("honcho asked although PORT was not in doubt")

    def port(env: dict[str, str], given: bool | None = None) -> int:
        ask = never if given is None else (lambda: given)
        return gateway_port(load(env), env, ask)

    assert port({"PORT": "5000"}) == 5000  # not under honcho: the user's own
    assert port({**under_honcho, "PORT": "9000"}) == 9000  # honcho's base, from the user
    assert port({**under_honcho, "PORT": "5000"}, given=False) == 8000  # honcho's default
    assert port({**under_honcho, "PORT": "5000"}, given=True) == 5000  # the user chose 5000


def test_api_tokens_from_a_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("file-one\nfile-two, file-three\n")
    cfg = load({"METASTREAM_API_TOKEN": "env-one", "METASTREAM_API_TOKEN_FILE": str(tokens)})
    assert cfg.api_tokens == Secrets(("env-one", "file-one", "file-two", "file-three"))
    assert "file-one" not in repr(cfg)
    with pytest.raises(ValueError, match="METASTREAM_API_TOKEN_FILE"):
        load({"METASTREAM_API_TOKEN_FILE": str(tmp_path / "missing")})


def test_sandbox_mode(tmp_path: Path) -> None:
    assert load({"METASTREAM_SANDBOX": "landlock"}).sandbox_mode == "landlock"
    assert load({}).sandbox_mode == ("uid" if os.geteuid() == 0 else "landlock")
    with pytest.raises(ValueError, match="METASTREAM_SANDBOX"):
        load({"METASTREAM_SANDBOX": "chroot"})
