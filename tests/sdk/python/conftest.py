"""Fixtures for the official-SDK compatibility suite.

Topology (real sockets, two real lattice processes):

  SDK client --> "gateway" lattice (under test)
                   gpt-*    -> kind openai    --> "upstream" lattice (/v1)
                   claude-* -> kind anthropic --> "upstream" lattice
                   gemini-* -> kind gemini    --> "upstream" lattice
                   llama*   -> kind ollama    --> "upstream" lattice
                   demo     -> kind mock (alias demo-alias)
                   deny forbidden-* (403), max_body_bytes = 1 MiB
                 "upstream" lattice: model "*" -> kind mock

The binary comes from $LATTICE_BIN (default <repo>/target/debug/lattice).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "lattice"
STARTUP_TIMEOUT_S = 30.0
LISTEN_RE = re.compile(r"^lattice listening on (https?://127\.0\.0\.1:\d+)\s*$")

UPSTREAM_SECRET = "sk-upstream-secret-for-sdk-tests"
CLIENT_OPENAI_KEY = "sk-client-dummy"
CLIENT_ANTHROPIC_KEY = "sk-ant-client-dummy"

UPSTREAM_CONFIG = """\
# "upstream" lattice for the SDK suite: everything goes to the deterministic mock.
[server]
listen = "127.0.0.1:0"

[upstreams.mock]
kind = "mock"

[[routes]]
model = "*"
upstream = "mock"

# Only the upstream denies these, so a client seeing this 429 proves the
# gateway really forwarded the request (and relays upstream errors).
[[deny]]
model = "gpt-upstream-limited"
status = 429
message = "upstream rate limit for gpt-upstream-limited"

[[deny]]
model = "claude-upstream-limited"
status = 429
message = "upstream rate limit for claude-upstream-limited"
"""

GATEWAY_CONFIG_TEMPLATE = """\
# "gateway" lattice under test for the SDK suite.
[server]
listen = "127.0.0.1:0"
max_body_bytes = 1048576

[[deny]]
model = "forbidden-*"
status = 403
message = "model forbidden-* is blocked by policy"

[upstreams.openai_up]
kind = "openai"
base_url = "http://127.0.0.1:{uport}/v1"
api_key = "${{LATTICE_SDK_TEST_UPSTREAM_KEY:-{secret}}}"

[upstreams.anthropic_up]
kind = "anthropic"
base_url = "http://127.0.0.1:{uport}"
api_key = "${{LATTICE_SDK_TEST_UPSTREAM_KEY:-{secret}}}"

[upstreams.gemini_up]
kind = "gemini"
base_url = "http://127.0.0.1:{uport}"
api_key = "${{LATTICE_SDK_TEST_UPSTREAM_KEY:-{secret}}}"

[upstreams.ollama_up]
kind = "ollama"
base_url = "http://127.0.0.1:{uport}"

[upstreams.local]
kind = "mock"

[[routes]]
model = "gpt-*"
upstream = "openai_up"

[[routes]]
model = "claude-*"
upstream = "anthropic_up"

[[routes]]
model = "gemini-*"
upstream = "gemini_up"

[[routes]]
model = "llama*"
upstream = "ollama_up"

[[routes]]
model = "demo"
upstream = "local"
aliases = ["demo-alias"]

# Every call is metered: streams are asked for their usage, which the SDK must never see
# unless it asked for it.
[budgets]
unknown_model = "default"
default_price = {{ input = 1.0, output = 2.0 }}

[[budgets.limit]]
name = "sdk-suite"
scope = "team"
window = "daily"
usd = 1000.0
"""


# --------------------------------------------------------------------------
# Process management
# --------------------------------------------------------------------------
@dataclass
class LatticeProcess:
    name: str
    proc: subprocess.Popen
    base_url: str
    stderr_path: Path

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _drain_stdout(proc: subprocess.Popen, lines: "queue.Queue[str | None]") -> None:
    # Keep reading for the whole life of the process so a chatty stdout can
    # never block it on a full pipe.
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.put(raw.decode("utf-8", errors="replace"))
    lines.put(None)


def start_lattice(binary: Path, config: Path, name: str, workdir: Path) -> LatticeProcess:
    stderr_path = workdir / f"{name}.stderr.log"
    stderr_file = open(stderr_path, "wb")
    try:
        proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            cwd=str(workdir),
        )
    finally:
        stderr_file.close()  # the child keeps its own descriptor

    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_drain_stdout, args=(proc, lines), daemon=True).start()

    seen: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S

    def fail(reason: str) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        stderr = stderr_path.read_text(errors="replace")
        pytest.fail(
            f"lattice {name} {reason}\n"
            f"command: {binary} serve --config {config}\n"
            f"exit code: {proc.returncode}\n"
            f"stdout so far:\n{''.join(seen)}\n"
            f"stderr:\n{stderr}",
            pytrace=False,
        )

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            fail(f"did not print its listening line within {STARTUP_TIMEOUT_S:.0f}s")
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                fail("exited before it was listening")
            continue
        if line is None:
            proc.wait(timeout=10)
            fail("exited before it was listening")
        seen.append(line)
        m = LISTEN_RE.match(line.strip())
        if m:
            return LatticeProcess(name=name, proc=proc, base_url=m.group(1), stderr_path=stderr_path)


def _port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def lattice_bin() -> Path:
    binary = Path(os.environ.get("LATTICE_BIN") or DEFAULT_BIN)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"lattice binary not found or not executable: {binary} "
            "(build it with `cargo build -p lattice-gateway` or set LATTICE_BIN)",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="session")
def lattice_topology(lattice_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("lattice-sdk")
    started: list[LatticeProcess] = []
    try:
        upstream_cfg = workdir / "upstream.toml"
        upstream_cfg.write_text(UPSTREAM_CONFIG)
        upstream = start_lattice(lattice_bin, upstream_cfg, "upstream", workdir)
        started.append(upstream)

        gateway_cfg = workdir / "gateway.toml"
        gateway_cfg.write_text(
            GATEWAY_CONFIG_TEMPLATE.format(uport=_port_of(upstream.base_url), secret=UPSTREAM_SECRET)
        )
        gateway = start_lattice(lattice_bin, gateway_cfg, "gateway", workdir)
        started.append(gateway)

        yield {"gateway": gateway, "upstream": upstream, "workdir": workdir}
    finally:
        for p in reversed(started):
            p.stop()


@pytest.fixture(scope="session")
def gateway_url(lattice_topology: dict) -> str:
    """Base URL of the gateway under test, e.g. http://127.0.0.1:PORT (no /v1)."""
    return lattice_topology["gateway"].base_url


@pytest.fixture(scope="session")
def openai_client(gateway_url: str):
    import openai

    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=CLIENT_OPENAI_KEY, max_retries=0, timeout=30.0)
    yield client
    client.close()


@pytest.fixture(scope="session")
def anthropic_client(gateway_url: str):
    import anthropic

    client = anthropic.Anthropic(base_url=gateway_url, api_key=CLIENT_ANTHROPIC_KEY, max_retries=0, timeout=30.0)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _gateway_still_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, fail loudly (with stderr) if a lattice process died."""
    yield
    if "lattice_topology" not in request.fixturenames:
        return
    topo = request.getfixturevalue("lattice_topology")
    for key in ("upstream", "gateway"):
        p: LatticeProcess = topo[key]
        if p.proc.poll() is not None:
            pytest.fail(
                f"lattice {p.name} exited with code {p.proc.returncode} during the test\nstderr:\n{p.stderr_text()}",
                pytrace=False,
            )
