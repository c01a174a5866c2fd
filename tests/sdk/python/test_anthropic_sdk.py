"""The official `anthropic` Python SDK against the Lattice gateway (Anthropic surface)."""

from __future__ import annotations

import json

import anthropic
import pytest

from sdkutil import LONG_PROMPT, OVERSIZED_TEXT, SHORT_PROMPT, mock_reply, words

# `demo` is served by the gateway's own mock; `claude-3-5-haiku-latest` goes
# through the anthropic-kind upstream to the second lattice process.
MSG_MODELS = ["demo", "claude-3-5-haiku-latest"]


def _messages(user_text: str) -> list[dict]:
    return [
        {"role": "user", "content": "first turn"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": user_text},
    ]


def _prompt_words(messages: list[dict]) -> int:
    return sum(words(m["content"]) for m in messages)


def _text_of(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


# ---------------------------------------------------------------- models ----
def test_models_list(anthropic_client: anthropic.Anthropic) -> None:
    page = anthropic_client.models.list()
    models = list(page)
    ids = [m.id for m in models]
    assert "demo" in ids
    assert "demo-alias" in ids
    for m in models:
        assert m.type == "model"
        assert isinstance(m.display_name, str) and m.display_name
        assert m.created_at is not None
    assert page.has_more is False
    assert page.first_id == ids[0]
    assert page.last_id == ids[-1]


# -------------------------------------------------------------- messages ----
@pytest.mark.parametrize("model", MSG_MODELS)
def test_messages_create(anthropic_client: anthropic.Anthropic, model: str) -> None:
    messages = _messages(LONG_PROMPT)
    expected = mock_reply(LONG_PROMPT)
    msg = anthropic_client.messages.create(model=model, max_tokens=256, messages=messages)

    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.id
    assert len(msg.content) == 1 and msg.content[0].type == "text"
    assert msg.content[0].text == expected
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == words(expected)
    assert msg.usage.input_tokens == _prompt_words(messages)


def test_messages_content_blocks_and_alias(anthropic_client: anthropic.Anthropic) -> None:
    msg = anthropic_client.messages.create(
        model="demo-alias",
        max_tokens=64,
        messages=[{"role": "user", "content": [{"type": "text", "text": SHORT_PROMPT}]}],
    )
    assert _text_of(msg) == mock_reply(SHORT_PROMPT)


# The SDKs drop `ping` events before handing them to the caller (anthropic's
# _streaming.py skips sse.event == "ping"), so the SDK-visible sequence has no
# ping; the wire-level sequence is checked separately below.
SDK_EVENT_PREFIX = ["message_start", "content_block_start"]
WIRE_EVENT_PREFIX = ["message_start", "content_block_start", "ping"]
EVENT_SUFFIX = ["content_block_stop", "message_delta", "message_stop"]


def _expected_sequence(prefix: list[str], types: list[str]) -> list[str]:
    n_deltas = len(types) - len(prefix) - len(EVENT_SUFFIX)
    assert n_deltas >= 1, types
    return prefix + ["content_block_delta"] * n_deltas + EVENT_SUFFIX


@pytest.mark.parametrize("model", MSG_MODELS)
def test_messages_raw_stream_event_sequence(anthropic_client: anthropic.Anthropic, model: str) -> None:
    messages = _messages(LONG_PROMPT)
    expected = mock_reply(LONG_PROMPT)
    stream = anthropic_client.messages.create(model=model, max_tokens=256, messages=messages, stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types == _expected_sequence(SDK_EVENT_PREFIX, types)

    start = events[0]
    assert start.message.role == "assistant"
    assert start.message.content == []
    assert start.message.usage.input_tokens == _prompt_words(messages)

    assert events[1].index == 0 and events[1].content_block.type == "text"
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert all(d.index == 0 and d.delta.type == "text_delta" for d in deltas)
    assert "".join(d.delta.text for d in deltas) == expected
    assert len(deltas) == words(expected)  # one delta per word

    message_delta = events[-2]
    assert message_delta.delta.stop_reason == "end_turn"
    assert message_delta.usage.output_tokens == words(expected)


@pytest.mark.parametrize("model", MSG_MODELS)
def test_messages_stream_wire_event_sequence(anthropic_client: anthropic.Anthropic, model: str) -> None:
    """Every SSE event on the wire, ping included, with matching `event:` and data.type."""
    with anthropic_client.messages.with_streaming_response.create(
        model=model, max_tokens=256, messages=_messages(SHORT_PROMPT), stream=True
    ) as resp:
        assert resp.http_response.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        event_names: list[str] = []
        data_types: list[str] = []
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event_names.append(line[len("event:") :].strip())
            elif line.startswith("data:"):
                data_types.append(json.loads(line[len("data:") :])["type"])
    assert event_names == _expected_sequence(WIRE_EVENT_PREFIX, event_names)
    assert data_types == event_names


@pytest.mark.parametrize("model", MSG_MODELS)
def test_messages_stream_helper(anthropic_client: anthropic.Anthropic, model: str) -> None:
    messages = _messages(LONG_PROMPT)
    expected = mock_reply(LONG_PROMPT)
    with anthropic_client.messages.stream(model=model, max_tokens=256, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == expected
    assert _text_of(final) == expected
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == words(expected)
    assert final.usage.input_tokens == _prompt_words(messages)


def test_messages_stream_helper_final_text(anthropic_client: anthropic.Anthropic) -> None:
    with anthropic_client.messages.stream(
        model="demo", max_tokens=256, messages=[{"role": "user", "content": SHORT_PROMPT}]
    ) as stream:
        assert stream.get_final_text() == mock_reply(SHORT_PROMPT)


@pytest.mark.parametrize("model", MSG_MODELS)
def test_count_tokens(anthropic_client: anthropic.Anthropic, model: str) -> None:
    messages = _messages(LONG_PROMPT)
    count = anthropic_client.messages.count_tokens(model=model, messages=messages)
    assert count.input_tokens == _prompt_words(messages)


@pytest.mark.parametrize("model", MSG_MODELS)
def test_max_tokens_truncation(anthropic_client: anthropic.Anthropic, model: str) -> None:
    full = mock_reply(LONG_PROMPT)
    msg = anthropic_client.messages.create(
        model=model, max_tokens=4, messages=[{"role": "user", "content": LONG_PROMPT}]
    )
    assert msg.stop_reason == "max_tokens"
    text = _text_of(msg)
    assert words(text) == 4
    assert full.startswith(text)
    assert msg.usage.output_tokens == 4


def test_max_tokens_truncation_stream(anthropic_client: anthropic.Anthropic) -> None:
    full = mock_reply(LONG_PROMPT)
    with anthropic_client.messages.stream(
        model="demo", max_tokens=2, messages=[{"role": "user", "content": LONG_PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert words(text) == 2 and full.startswith(text)
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 2


# ---------------------------------------------------------------- errors ----
def _hi() -> list[dict]:
    return [{"role": "user", "content": "hi"}]


def test_error_empty_model_is_bad_request(anthropic_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as ei:
        anthropic_client.messages.create(model="", max_tokens=16, messages=_hi())
    assert ei.value.status_code == 400
    assert ei.value.type == "invalid_request_error"
    assert isinstance(ei.value.body, dict) and ei.value.body.get("type") == "error"


def test_error_unknown_model_is_not_found(anthropic_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as ei:
        anthropic_client.messages.create(model="no-such-model-anywhere", max_tokens=16, messages=_hi())
    assert ei.value.status_code == 404
    assert ei.value.type == "not_found_error"
    body = ei.value.body
    assert isinstance(body, dict) and body.get("type") == "error"
    assert body["error"]["type"] == "not_found_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_error_unknown_model_stream_is_not_found(anthropic_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        with anthropic_client.messages.stream(model="no-such-model-anywhere", max_tokens=16, messages=_hi()) as s:
            s.until_done()


def test_error_oversized_body_is_413(anthropic_client: anthropic.Anthropic) -> None:
    # anthropic 2.13 maps 413 to ContentTooLargeError; RequestTooLargeError is
    # its deprecated alias (the same class).
    with pytest.raises(anthropic.ContentTooLargeError) as ei:
        anthropic_client.messages.create(
            model="demo", max_tokens=16, messages=[{"role": "user", "content": OVERSIZED_TEXT}]
        )
    assert isinstance(ei.value, anthropic.RequestTooLargeError)
    assert ei.value.status_code == 413
    assert ei.value.type == "request_too_large"


def test_error_denied_model_is_permission_denied(anthropic_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as ei:
        anthropic_client.messages.create(model="forbidden-x", max_tokens=16, messages=_hi())
    assert ei.value.status_code == 403
    assert ei.value.type == "permission_error"
    assert "blocked by policy" in (ei.value.api_message or "")


def test_error_count_tokens_unknown_model(anthropic_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client.messages.count_tokens(model="no-such-model-anywhere", messages=_hi())


def test_upstream_error_is_relayed(anthropic_client: anthropic.Anthropic) -> None:
    """claude-* really goes to the upstream lattice: only the upstream denies this model."""
    with pytest.raises(anthropic.RateLimitError) as ei:
        anthropic_client.messages.create(model="claude-upstream-limited", max_tokens=16, messages=_hi())
    assert ei.value.status_code == 429
    assert ei.value.type == "rate_limit_error"
    assert "upstream rate limit" in (ei.value.api_message or "")
