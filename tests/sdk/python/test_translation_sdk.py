"""The same agent code, on the official `openai` and `anthropic` SDKs, reaches an upstream of
either dialect by changing only the model name: `gpt-*` routes to an openai-kind upstream,
`claude-*` to an anthropic-kind one (both the second lattice process, whose mock answers in the
dialect it is called in), `demo` to the gateway's own mock. A call whose client and upstream
dialects differ is translated by the gateway: JSON, streams and tool calls, multi-turn.

The mock calls each tool named `call:NAME` in the last user message when tools are offered.
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from sdkutil import SHORT_PROMPT, mock_reply

MODELS = ["demo", "gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.5-flash", "llama3.2"]

OA_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
AN_TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


# ---------------------------------------------------------------- OpenAI SDK ----
def openai_agent(client: openai.OpenAI, model: str) -> tuple[str, list]:
    """One agent turn loop: ask, run the tool the model calls, send the result, read the answer."""
    messages: list = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "what is the weather? call:get_weather"},
    ]
    first = client.chat.completions.create(model=model, messages=messages, tools=OA_TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {}
    messages.append(choice.message.model_dump(exclude_none=True))
    for c in calls:
        messages.append({"role": "tool", "tool_call_id": c.id, "content": '{"temp_c": 21}'})
    messages.append({"role": "user", "content": SHORT_PROMPT})
    second = client.chat.completions.create(model=model, messages=messages, tools=OA_TOOLS)
    return second.choices[0].message.content, [first, second]


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_multi_turn_tool_use_on_every_upstream(openai_client: openai.OpenAI, model: str) -> None:
    text, (first, second) = openai_agent(openai_client, model)
    assert text == mock_reply(SHORT_PROMPT)
    assert second.choices[0].finish_reason == "stop"
    assert second.object == "chat.completion"
    for r in (first, second):
        assert r.usage is not None and r.usage.prompt_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_stream_on_every_upstream(openai_client: openai.OpenAI, model: str) -> None:
    stream = openai_client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": SHORT_PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == mock_reply(SHORT_PROMPT)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_streamed_tool_call_on_every_upstream(openai_client: openai.OpenAI, model: str) -> None:
    with openai_client.chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": "weather please call:get_weather"}],
        tools=OA_TOOLS,
    ) as s:
        final = s.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {}


def test_openai_sdk_gets_a_refusal_for_what_anthropic_cannot_do(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(
            model="claude-3-5-haiku-latest",
            messages=[{"role": "user", "content": "hi"}],
            logprobs=True,
        )
    assert e.value.code == "unsupported_parameter"
    assert "logprobs" in str(e.value)


# ------------------------------------------------------------- Anthropic SDK ----
def anthropic_agent(client: anthropic.Anthropic, model: str) -> tuple[str, list]:
    messages: list = [{"role": "user", "content": "what is the weather? call:get_weather"}]
    first = client.messages.create(
        model=model, max_tokens=256, system="You are a weather bot.", messages=messages, tools=AN_TOOLS
    )
    assert first.stop_reason == "tool_use", first
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather"]
    assert uses[0].input == {}
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": '{"temp_c": 21}'} for u in uses]
    messages.append({"role": "user", "content": [*results, {"type": "text", "text": SHORT_PROMPT}]})
    second = client.messages.create(model=model, max_tokens=256, messages=messages, tools=AN_TOOLS)
    text = "".join(b.text for b in second.content if b.type == "text")
    return text, [first, second]


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_multi_turn_tool_use_on_every_upstream(
    anthropic_client: anthropic.Anthropic, model: str
) -> None:
    text, (first, second) = anthropic_agent(anthropic_client, model)
    assert text == mock_reply(SHORT_PROMPT)
    assert second.stop_reason == "end_turn"
    assert second.type == "message"
    for r in (first, second):
        assert r.usage.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_stream_with_tool_call_on_every_upstream(
    anthropic_client: anthropic.Anthropic, model: str
) -> None:
    with anthropic_client.messages.stream(
        model=model,
        max_tokens=256,
        messages=[{"role": "user", "content": "weather please call:get_weather"}],
        tools=AN_TOOLS,
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == mock_reply("weather please call:get_weather")
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather"]
    assert uses[0].input == {}
    assert final.usage.output_tokens > 0


def test_anthropic_sdk_sees_an_upstream_overload_as_its_own_error(anthropic_client: anthropic.Anthropic) -> None:
    # The upstream lattice refuses gpt-upstream-limited with an OpenAI 429; the Anthropic client
    # gets Anthropic's rate-limit error.
    with pytest.raises(anthropic.RateLimitError) as e:
        anthropic_client.messages.create(
            model="gpt-upstream-limited", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 429
    assert e.value.body["error"]["type"] == "rate_limit_error"
