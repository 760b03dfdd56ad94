"""`oht-agent gateway` runs its event loop on uvloop when it is installed, and says so; without
uvloop it runs on asyncio's loop. `oht-agent core` never runs on uvloop."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import cli, logs


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # The CLI sets up the daemon's logging; here the records go to pytest's capture instead.
    monkeypatch.setattr(logs, "setup_logging", lambda *args, **kwargs: None)
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nid = "oht-loop"\ndata_dir = "{tmp_path / "data"}"\n\n[bus]\nport = "/dev/null"\n')
    return str(path)


def loop_of_gateway(monkeypatch: pytest.MonkeyPatch, config: str) -> type[asyncio.AbstractEventLoop]:
    from agent.gateway import Gateway

    seen: list[type[asyncio.AbstractEventLoop]] = []

    async def run(self: Gateway) -> None:
        seen.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(Gateway, "run", run)
    assert cli.cmd_gateway(config) == 0
    return seen[0]


def test_the_gateway_runs_on_uvloop_and_says_so(monkeypatch: pytest.MonkeyPatch, config: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    uvloop = pytest.importorskip("uvloop")
    with caplog.at_level(logging.INFO, logger="oht.gateway"):
        assert loop_of_gateway(monkeypatch, config) is uvloop.Loop
    assert "event loop: uvloop" in caplog.text


def test_without_uvloop_the_gateway_runs_on_asyncio(monkeypatch: pytest.MonkeyPatch, config: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "uvloop", None)  # its import fails, as where it is not installed
    with caplog.at_level(logging.INFO, logger="oht.gateway"):
        loop = loop_of_gateway(monkeypatch, config)
    assert loop.__module__.startswith("asyncio")
    assert "event loop: asyncio (uvloop not importable" in caplog.text


def test_the_core_never_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch, config: str) -> None:
    pytest.importorskip("uvloop")
    import agent.runtime

    seen: list[type[asyncio.AbstractEventLoop]] = []

    class Core:
        def __init__(self, cfg: Any) -> None:
            pass

        async def run(self) -> None:
            seen.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(agent.runtime, "Runtime", Core)
    assert cli.cmd_core(config) == 0
    assert seen[0].__module__.startswith("asyncio"), seen
