"""Google's `google-genai` and Ollama's `ollama` Python SDKs, pointed at the gateway, reach every
upstream kind by changing only the model name: `demo` (the gateway's mock), `gpt-*` (openai),
`claude-*` (anthropic), `gemini-*` (gemini) and `llama*` (ollama), the last four on the second
lattice process. JSON, streams and multi-turn tool use; the mock calls each tool named
`call:NAME` in the last user message when tools are offered.
"""

from __future__ import annotations

import ollama
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from sdkutil import SHORT_PROMPT, mock_reply

MODELS = ["demo", "gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.5-flash", "llama3.2"]

WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Current weather in a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
)
OLLAMA_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def gemini(gateway_url: str) -> genai.Client:
    return genai.Client(
        api_key="client-gemini-key",
        http_options=types.HttpOptions(base_url=gateway_url, api_version="v1beta", timeout=30_000),
    )


@pytest.fixture(scope="module")
def ollama_client(gateway_url: str) -> ollama.Client:
    return ollama.Client(host=gateway_url, timeout=30.0)


# ---------------------------------------------------------------- google-genai ----
@pytest.mark.parametrize("model", MODELS)
def test_gemini_sdk_generates_on_every_upstream(gemini: genai.Client, model: str) -> None:
    r = gemini.models.generate_content(
        model=model,
        contents=SHORT_PROMPT,
        config=types.GenerateContentConfig(system_instruction="You are terse.", temperature=0.2),
    )
    assert r.text == mock_reply(SHORT_PROMPT)
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata.prompt_token_count > 0
    assert r.usage_metadata.candidates_token_count == len(mock_reply(SHORT_PROMPT).split())


@pytest.mark.parametrize("model", MODELS)
def test_gemini_sdk_streams_on_every_upstream(gemini: genai.Client, model: str) -> None:
    chunks = list(gemini.models.generate_content_stream(model=model, contents=SHORT_PROMPT))
    assert len(chunks) > 1, "streamed, not one answer"
    assert "".join(c.text or "" for c in chunks) == mock_reply(SHORT_PROMPT)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.prompt_token_count > 0


@pytest.mark.parametrize("model", MODELS)
def test_gemini_sdk_multi_turn_tool_use_on_every_upstream(gemini: genai.Client, model: str) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    history = [types.Content(role="user", parts=[types.Part(text="what is the weather? call:get_weather")])]
    first = gemini.models.generate_content(model=model, contents=history, config=config)
    calls = first.function_calls
    assert [c.name for c in calls] == ["get_weather"], first
    history.append(first.candidates[0].content)
    history.append(
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(name="get_weather", response={"temp_c": 21}),
                types.Part(text=SHORT_PROMPT),
            ],
        )
    )
    second = gemini.models.generate_content(model=model, contents=history, config=config)
    assert second.text == mock_reply(SHORT_PROMPT)
    assert not second.function_calls


def test_gemini_sdk_sees_an_unknown_model_as_its_own_not_found(gemini: genai.Client) -> None:
    with pytest.raises(genai_errors.ClientError) as e:
        gemini.models.generate_content(model="no-such-model", contents="hi")
    assert e.value.code == 404
    assert e.value.status == "NOT_FOUND"


def test_gemini_sdk_key_in_the_query_is_read_and_never_forwarded(gateway_url: str) -> None:
    import httpx

    r = httpx.post(
        f"{gateway_url}/v1beta/models/gemini-2.5-flash:generateContent?key=client-gemini-key",
        json={"contents": [{"role": "user", "parts": [{"text": SHORT_PROMPT}]}]},
        timeout=30.0,
    )
    assert r.status_code == 200, r.text
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == mock_reply(SHORT_PROMPT)


# ---------------------------------------------------------------------- ollama ----
@pytest.mark.parametrize("model", MODELS)
def test_ollama_sdk_chats_on_every_upstream(ollama_client: ollama.Client, model: str) -> None:
    r = ollama_client.chat(
        model=model,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": SHORT_PROMPT}],
    )
    assert r.message.content == mock_reply(SHORT_PROMPT)
    assert r.done and r.done_reason == "stop"
    assert r.prompt_eval_count > 0
    assert r.eval_count == len(mock_reply(SHORT_PROMPT).split())


@pytest.mark.parametrize("model", MODELS)
def test_ollama_sdk_streams_on_every_upstream(ollama_client: ollama.Client, model: str) -> None:
    parts = list(ollama_client.chat(model=model, messages=[{"role": "user", "content": SHORT_PROMPT}], stream=True))
    assert len(parts) > 1
    assert "".join(p.message.content for p in parts) == mock_reply(SHORT_PROMPT)
    assert parts[-1].done and parts[-1].eval_count > 0


@pytest.mark.parametrize("model", MODELS)
def test_ollama_sdk_multi_turn_tool_use_on_every_upstream(ollama_client: ollama.Client, model: str) -> None:
    messages: list = [{"role": "user", "content": "what is the weather? call:get_weather"}]
    first = ollama_client.chat(model=model, messages=messages, tools=OLLAMA_TOOLS)
    calls = first.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"], first
    assert calls[0].function.arguments == {}
    messages.append(first.message)
    messages.append({"role": "tool", "content": '{"temp_c": 21}', "tool_name": "get_weather"})
    messages.append({"role": "user", "content": SHORT_PROMPT})
    second = ollama_client.chat(model=model, messages=messages, tools=OLLAMA_TOOLS)
    assert second.message.content == mock_reply(SHORT_PROMPT)
    assert not second.message.tool_calls


def test_ollama_sdk_lists_the_gateways_models(ollama_client: ollama.Client) -> None:
    names = [m.model for m in ollama_client.list().models]
    assert "demo" in names


def test_gemini_sdk_counts_tokens_without_charging(gemini: genai.Client) -> None:
    # The mock counts words; a count is a free call (no budget is charged for it).
    r = gemini.models.count_tokens(model="demo", contents=SHORT_PROMPT)
    assert r.total_tokens == len(SHORT_PROMPT.split())
    r = gemini.models.count_tokens(model="gemini-2.5-flash", contents=SHORT_PROMPT)
    assert r.total_tokens == len(SHORT_PROMPT.split()), "passed through to the gemini-kind upstream"
