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
