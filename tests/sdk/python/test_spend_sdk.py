"""Spend through the official OpenAI SDK: what the gateway charges is the usage the SDK saw,
priced from the shipped table (gpt-4o-mini: $0.15 / $0.60 per million tokens)."""

from __future__ import annotations

import time

import httpx
import openai

from sdkutil import SHORT_PROMPT, words

# gpt-4o-mini in pico-dollars per token.
INPUT_PICO = 150_000
OUTPUT_PICO = 600_000


def _nano(usd: str) -> int:
    whole, frac = usd.split(".")
    return int(whole) * 1_000_000_000 + int(frac)


def _row(gateway_url: str) -> dict:
    r = httpx.get(f"{gateway_url}/admin/spend", params={"group_by": "model"}, timeout=30.0)
    r.raise_for_status()
    rows = {row["model"]: row for row in r.json()["rows"]}
    return rows.get("gpt-4o-mini", {"calls": 0, "unsettled_calls": 0, "output_tokens": 0, "cost_usd": "0.0"})


def _cost(prompt: int, completion: int) -> int:
    return -(-(prompt * INPUT_PICO + completion * OUTPUT_PICO) // 1000)


def test_spend_report_charges_the_usage_the_sdk_saw(openai_client: openai.OpenAI, gateway_url: str) -> None:
    before = _row(gateway_url)
    messages = [{"role": "user", "content": SHORT_PROMPT}]
    resp = openai_client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=7)
    # A stream that did not ask for usage: charged all the same, from the usage the gateway
    # asked the upstream for (and kept from the SDK).
    chunks = list(openai_client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    assert all(c.usage is None for c in chunks)
    streamed = words("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))

    deadline = time.monotonic() + 10
    after = _row(gateway_url)
    while after["calls"] < before["calls"] + 2 or after["unsettled_calls"] != before["unsettled_calls"]:
        assert time.monotonic() < deadline, f"calls did not settle: {after}"
        time.sleep(0.05)
        after = _row(gateway_url)

    prompt = resp.usage.prompt_tokens
    assert after["output_tokens"] - before["output_tokens"] == resp.usage.completion_tokens + streamed
    expected = _cost(prompt, resp.usage.completion_tokens) + _cost(prompt, streamed)
    assert _nano(after["cost_usd"]) - _nano(before["cost_usd"]) == expected


def test_budget_report_needs_a_known_group(gateway_url: str) -> None:
    r = httpx.get(f"{gateway_url}/admin/spend", params={"group_by": "planet"}, timeout=30.0)
    assert r.status_code == 400
    assert "group_by" in r.json()["error"]["message"]
