"""Identity and Rego denials as the official SDKs see them: typed 401 / 403 exceptions whose
messages carry the reason (the policy's reasons for 403), in both dialects.

A third lattice process: API keys from `lattice keys create`, the shipped policy bundle
(`policies/`), every model on the built-in mock provider.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import anthropic
import openai
import pytest

from conftest import REPO_ROOT, start_lattice

CONFIG = """\
data_dir = "{data}"

[identity]
methods = ["api_key"]

[authorization]
policy_dir = "{policies}"

[server]
listen = "127.0.0.1:0"

[upstreams.mock]
kind = "mock"

[[routes]]
model = "*"
upstream = "mock"
"""


def _create_key(binary: Path, data: Path, team: str, user: str) -> str:
    out = subprocess.run(
        [str(binary), "keys", "create", "--data-dir", str(data), "--team", team, "--user", user],
        check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def governed(lattice_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("governed")
    data = work / "data"
    keys = {
        "research": _create_key(lattice_bin, data, "research", "ana"),
        "support": _create_key(lattice_bin, data, "support", "bo"),
    }
    config = work / "governed.toml"
    config.write_text(CONFIG.format(data=data, policies=REPO_ROOT / "policies"))
    proc = start_lattice(lattice_bin, config, "governed", work)
    try:
        yield {"url": proc.base_url, "keys": keys}
    finally:
        proc.stop()


def oa(governed: dict, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=governed["url"] + "/v1", api_key=key, max_retries=0)


def an(governed: dict, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=governed["url"], api_key=key, max_retries=0)


MSGS = [{"role": "user", "content": "hello"}]


def test_openai_allowed_with_a_key(governed: dict) -> None:
    r = oa(governed, governed["keys"]["research"]).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert r.choices[0].message.content.startswith("Hello from the Lattice mock provider")


def test_openai_wrong_key_is_authentication_error(governed: dict) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        oa(governed, "lk_000000000000_" + "0" * 64).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert e.value.status_code == 401
    assert "not valid" in str(e.value)


def test_openai_policy_denial_carries_the_reason(governed: dict) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        oa(governed, governed["keys"]["support"]).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert e.value.status_code == 403
    assert 'team "support" may not use model "gpt-4o"' in str(e.value)


def test_anthropic_allowed_and_denied(governed: dict) -> None:
    ok = an(governed, governed["keys"]["research"]).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=16, messages=MSGS
    )
    assert ok.content[0].text.startswith("Hello from")
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        an(governed, governed["keys"]["support"]).messages.create(
            model="claude-3-5-haiku-latest", max_tokens=16, messages=MSGS
        )
    assert 'may not use model "claude-3-5-haiku-latest"' in str(e.value)
    with pytest.raises(anthropic.AuthenticationError):
        an(governed, "sk-ant-not-a-gateway-key").messages.create(
            model="claude-3-5-haiku-latest", max_tokens=16, messages=MSGS
        )


# The tools Claude Code offers on every call (its built-ins and an MCP server's), and Codex CLI's.
CLAUDE_CODE_TOOLS = ["Task", "Bash", "Glob", "Grep", "LS", "ExitPlanMode", "Read", "Edit", "MultiEdit",
                     "Write", "NotebookEdit", "WebFetch", "TodoWrite", "WebSearch", "BashOutput",
                     "KillShell", "mcp__github__create_issue"]
CODEX_TOOLS = ["shell", "apply_patch", "update_plan", "view_image"]


def test_coding_agents_run_on_a_general_purpose_team_and_not_on_a_restricted_one(governed: dict) -> None:
    """A new user points Claude Code (Anthropic SDK) or Codex (OpenAI SDK) at the shipped policy
    with a `research` key: the calls pass with every tool offered; a `support` key is refused."""
    tools = [{"name": n, "description": n, "input_schema": {"type": "object", "properties": {}}}
             for n in CLAUDE_CODE_TOOLS]
    ok = an(governed, governed["keys"]["research"]).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=16, messages=MSGS, tools=tools,
        system="You are Claude Code, Anthropic's official CLI for Claude.",
    )
    assert ok.content[0].type == "text"
    functions = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
                 for n in CODEX_TOOLS]
    done = oa(governed, governed["keys"]["research"]).chat.completions.create(
        model="gpt-4o", messages=MSGS, tools=functions
    )
    assert done.choices[0].message.content
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        an(governed, governed["keys"]["support"]).messages.create(
            model="gpt-4o-mini", max_tokens=16, messages=MSGS, tools=tools
        )
    assert 'tool "Bash" is not allowed for team "support"' in str(e.value)
