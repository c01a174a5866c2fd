"""Content gates as the official SDKs see them: PII redacted in answers (streamed and not), and
a model's call of a tool the caller may not use taken out of the answer (or the answer stopped)
in a form the SDKs' own stream accumulators accept.

Two lattice processes with API keys and the shipped policy bundle (team `analysts` may use the
tools web_search, calculator and code_interpreter), every model on the built-in mock, which
echoes the prompt and calls the tools named `call:NAME` in it. One removes disallowed tool calls,
the other uses the default (block).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import anthropic
import openai
import pytest

from conftest import REPO_ROOT, start_lattice
from test_identity_policy_sdk import _create_key

CONFIG = """\
data_dir = "{data}"

[identity]
methods = ["api_key"]

[authorization]
policy_dir = "{policies}"

[pii]
response = {{ email = "redact", card = "mask" }}

{tools}

[server]
listen = "127.0.0.1:0"

[upstreams.mock]
kind = "mock"

[[routes]]
model = "*"
upstream = "mock"
"""

SEARCH_OA = [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object"}}}]
SEARCH_AN = [{"name": "web_search", "input_schema": {"type": "object"}}]
PROMPT = "mail ana.lopez@example.com card 4111-1111-1111-1111 call:shell call:web_search"


def _start(lattice_bin: Path, work: Path, name: str, tools: str) -> tuple:
    data = work / f"{name}-data"
    key = _create_key(lattice_bin, data, "analysts", "ana")
    config = work / f"{name}.toml"
    config.write_text(CONFIG.format(data=data, policies=REPO_ROOT / "policies", tools=tools))
    return start_lattice(lattice_bin, config, name, work), key


@pytest.fixture(scope="module")
def content(lattice_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("content")
    remove, rkey = _start(lattice_bin, work, "remove", '[tools]\ncalls = "remove"')
    block, bkey = _start(lattice_bin, work, "block", "")
    try:
        yield {"remove": (remove.base_url, rkey), "block": (block.base_url, bkey)}
    finally:
        remove.stop()
        block.stop()


def oa(content: dict, which: str) -> openai.OpenAI:
    url, key = content[which]
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def an(content: dict, which: str) -> anthropic.Anthropic:
    url, key = content[which]
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


MSGS = [{"role": "user", "content": PROMPT}]


def _clean(text: str) -> None:
    assert "ana.lopez@example.com" not in text and "4111-1111-1111-1111" not in text, text
    assert "[EMAIL_1]" in text and "***************1111" in text, text


def test_openai_answers_are_redacted_and_the_disallowed_call_removed(content: dict) -> None:
    client = oa(content, "remove")
    r = client.chat.completions.create(model="gpt-4o", messages=MSGS, tools=SEARCH_OA)
    _clean(r.choices[0].message.content)
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["web_search"]
    # The SDK's stream helper accumulates deltas by index: the kept call must come out whole.
    with client.chat.completions.stream(model="gpt-4o", messages=MSGS, tools=SEARCH_OA) as s:
        final = s.get_final_completion()
    msg = final.choices[0].message
    _clean(msg.content)
    assert [(c.function.name, c.function.arguments) for c in msg.tool_calls] == [("web_search", "{}")]
    assert final.choices[0].finish_reason == "tool_calls"


def test_anthropic_answers_are_redacted_and_the_disallowed_call_removed(content: dict) -> None:
    client = an(content, "remove")
    r = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64, messages=MSGS, tools=SEARCH_AN)
    _clean(r.content[0].text)
    assert [b.name for b in r.content if b.type == "tool_use"] == ["web_search"]
    with client.messages.stream(
        model="claude-3-5-haiku-latest", max_tokens=64, messages=MSGS, tools=SEARCH_AN
    ) as s:
        final = s.get_final_message()
    _clean(final.content[0].text)
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in uses] == [("web_search", {})]
    assert final.stop_reason == "tool_use"


def test_a_disallowed_call_stops_the_answer_by_default(content: dict) -> None:
    client = oa(content, "block")
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MSGS, tools=SEARCH_OA)
    assert "the model called the tool `shell`" in str(e.value)
    # In a stream the SDK raises the error event.
    with pytest.raises(openai.APIError) as e:
        for _ in client.chat.completions.create(model="gpt-4o", messages=MSGS, tools=SEARCH_OA, stream=True):
            pass
    assert "the model called the tool `shell`" in str(e.value)
    aclient = an(content, "block")
    with pytest.raises(anthropic.APIStatusError) as e:
        with aclient.messages.stream(
            model="claude-3-5-haiku-latest", max_tokens=64, messages=MSGS, tools=SEARCH_AN
        ) as s:
            s.get_final_message()
    assert "the model called the tool `shell`" in str(e.value)
