"""The official `openai` Python SDK against the Lattice gateway (OpenAI surface)."""

from __future__ import annotations

import math

import openai
import pytest

from sdkutil import LONG_PROMPT, OVERSIZED_TEXT, SHORT_PROMPT, mock_reply, words

# `demo` is served by the gateway's own mock; `gpt-4o-mini` goes through the
# openai-kind upstream to the second lattice process (whose mock answers).
CHAT_MODELS = ["demo", "gpt-4o-mini"]


def _messages(user_text: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first turn"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": user_text},
    ]


def _prompt_words(messages: list[dict]) -> int:
    return sum(words(m["content"]) for m in messages)


# ---------------------------------------------------------------- models ----
def test_models_list_contains_configured_names_and_aliases(openai_client: openai.OpenAI) -> None:
    page = openai_client.models.list()
    ids = [m.id for m in page]
    assert "demo" in ids
    assert "demo-alias" in ids
    for m in page.data:
        assert m.object == "model"
        assert isinstance(m.id, str) and m.id


# ------------------------------------------------------------------ chat ----
@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_non_stream(openai_client: openai.OpenAI, model: str) -> None:
    messages = _messages(LONG_PROMPT)
    resp = openai_client.chat.completions.create(model=model, messages=messages)

    expected = mock_reply(LONG_PROMPT)
    assert resp.object == "chat.completion"
    assert resp.id
    assert isinstance(resp.created, int)
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason == "stop"

    assert resp.usage is not None
    assert resp.usage.completion_tokens == words(expected)
    assert resp.usage.prompt_tokens == _prompt_words(messages)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_via_alias(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(
        model="demo-alias", messages=[{"role": "user", "content": SHORT_PROMPT}]
    )
    assert resp.choices[0].message.content == mock_reply(SHORT_PROMPT)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_with_include_usage(openai_client: openai.OpenAI, model: str) -> None:
    messages = _messages(LONG_PROMPT)
    expected = mock_reply(LONG_PROMPT)
    stream = openai_client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "no chunks received"

    text = ""
    finish_reasons = []
    usage_chunks = []
    for i, chunk in enumerate(chunks):
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage_chunks.append(i)
        for choice in chunk.choices:
            assert choice.index == 0
            if choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)

    assert text == expected
    assert finish_reasons == ["stop"]
    # Exactly one usage chunk, and it is the last one with empty choices.
    assert usage_chunks == [len(chunks) - 1]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == words(expected)
    assert last.usage.prompt_tokens == _prompt_words(messages)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # All chunks of one completion share an id.
    assert len({c.id for c in chunks}) == 1
    # One content chunk per word (the spec's streaming granularity).
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == words(expected)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_without_include_usage(openai_client: openai.OpenAI, model: str) -> None:
    expected = mock_reply(SHORT_PROMPT)
    stream = openai_client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": SHORT_PROMPT}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert all(c.usage is None for c in chunks), "usage chunk sent without stream_options.include_usage"
    assert all(c.choices for c in chunks), "empty-choices chunk sent without include_usage"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_max_tokens_truncates_with_length(openai_client: openai.OpenAI, model: str) -> None:
    full = mock_reply(LONG_PROMPT)
    resp = openai_client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=5
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert words(choice.message.content) == 5
    assert full.startswith(choice.message.content)
    assert resp.usage.completion_tokens == 5


def test_chat_stream_max_tokens_truncates_with_length(openai_client: openai.OpenAI) -> None:
    full = mock_reply(LONG_PROMPT)
    stream = openai_client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert words(text) == 3
    assert full.startswith(text)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


# ------------------------------------------------------------ embeddings ----
def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


@pytest.mark.parametrize("model", ["demo", "gpt-embedding-test"])
def test_embeddings_base64_default_and_float_agree(openai_client: openai.OpenAI, model: str) -> None:
    inp = "the quick brown fox"
    # The SDK asks for base64 by default and decodes it to floats itself.
    b64 = openai_client.embeddings.create(model=model, input=inp)
    flt = openai_client.embeddings.create(model=model, input=inp, encoding_format="float")

    for resp in (b64, flt):
        assert resp.object == "list"
        assert len(resp.data) == 1
        assert resp.data[0].object == "embedding"
        assert resp.data[0].index == 0
    v_b64 = b64.data[0].embedding
    v_flt = flt.data[0].embedding
    assert isinstance(v_b64, list) and all(isinstance(x, float) for x in v_b64)
    assert len(v_b64) == 8 and len(v_flt) == 8
    assert v_b64 == pytest.approx(v_flt, rel=1e-5, abs=1e-6)
    assert _norm(v_flt) == pytest.approx(1.0, abs=1e-4)


def test_embeddings_deterministic_batch_and_dimensions(openai_client: openai.OpenAI) -> None:
    a = openai_client.embeddings.create(model="demo", input=["alpha", "beta"], encoding_format="float")
    b = openai_client.embeddings.create(model="demo", input=["alpha", "beta"], encoding_format="float")
    assert [d.index for d in a.data] == [0, 1]
    assert [d.embedding for d in a.data] == [d.embedding for d in b.data]
    assert a.data[0].embedding != a.data[1].embedding

    d16 = openai_client.embeddings.create(model="demo", input="alpha", dimensions=16)
    d16f = openai_client.embeddings.create(model="demo", input="alpha", dimensions=16, encoding_format="float")
    assert len(d16.data[0].embedding) == 16
    assert len(d16f.data[0].embedding) == 16
    assert d16.data[0].embedding == pytest.approx(d16f.data[0].embedding, rel=1e-5, abs=1e-6)
    assert _norm(d16f.data[0].embedding) == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- errors ----
def test_error_empty_model_is_bad_request(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        openai_client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 400
    assert isinstance(ei.value.body, dict) and ei.value.body.get("message")


def test_error_unknown_model_is_not_found(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        openai_client.chat.completions.create(
            model="no-such-model-anywhere", messages=[{"role": "user", "content": "hi"}]
        )
    assert ei.value.status_code == 404
    assert ei.value.code == "model_not_found"
    assert isinstance(ei.value.body, dict)
    assert set(ei.value.body) >= {"message", "type", "param", "code"}


def test_error_unknown_model_stream_is_not_found(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        openai_client.chat.completions.create(
            model="no-such-model-anywhere", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert ei.value.code == "model_not_found"


def test_error_oversized_body_is_413(openai_client: openai.OpenAI) -> None:
    # openai-python has no dedicated 413 class: _make_status_error falls back
    # to the APIStatusError base class itself for statuses it does not map.
    with pytest.raises(openai.APIStatusError) as ei:
        openai_client.chat.completions.create(model="demo", messages=[{"role": "user", "content": OVERSIZED_TEXT}])
    assert type(ei.value) is openai.APIStatusError
    assert ei.value.status_code == 413


def test_error_denied_model_is_permission_denied(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as ei:
        openai_client.chat.completions.create(model="forbidden-x", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 403
    assert "blocked by policy" in ei.value.message


def test_error_denied_model_embeddings(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        openai_client.embeddings.create(model="forbidden-embed", input="hi")


def test_gateway_survives_errors(openai_client: openai.OpenAI) -> None:
    """After the error cases above the same client keeps working."""
    resp = openai_client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "still here"}])
    assert resp.choices[0].message.content == mock_reply("still here")


def test_upstream_error_is_relayed(openai_client: openai.OpenAI) -> None:
    """gpt-* really goes to the upstream lattice: only the upstream denies this model."""
    with pytest.raises(openai.RateLimitError) as ei:
        openai_client.chat.completions.create(
            model="gpt-upstream-limited", messages=[{"role": "user", "content": "hi"}]
        )
    assert ei.value.status_code == 429
    assert "upstream rate limit" in ei.value.message


def test_request_id_header(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert resp._request_id
    with pytest.raises(openai.NotFoundError) as ei:
        openai_client.chat.completions.create(model="no-such-model-anywhere", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.request_id
