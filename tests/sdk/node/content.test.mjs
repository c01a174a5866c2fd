// Content gates as the official Node SDKs see them (the Node twin of
// tests/sdk/python/test_content_sdk.py): an answer's PII redacted in streams, and a model's call
// of a tool the caller may not use taken out, in a form the SDKs' stream helpers accumulate.
//
// Its own lattice process: an API key of team `analysts` (tools web_search, calculator and
// code_interpreter in the shipped policy), `[tools] calls = "remove"`, every model on the
// built-in mock, which echoes the prompt and calls the tools named `call:NAME` in it.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

import { REPO_ROOT, createKey, governedConfig, startLattice, stopProcess } from './helpers.mjs';

const CONTENT = `
[pii]
response = { email = "redact", card = "mask" }

[tools]
calls = "remove"
`;

const PROMPT = 'mail ana.lopez@example.com card 4111-1111-1111-1111 call:shell call:web_search';
const MSGS = [{ role: 'user', content: PROMPT }];

function clean(text) {
  assert.ok(!text.includes('ana.lopez@example.com') && !text.includes('4111-1111-1111-1111'), text);
  assert.ok(text.includes('[EMAIL_1]') && text.includes('***************1111'), text);
}

describe('content gates (node SDKs)', () => {
  let work;
  let gateway;
  let key;

  before(async () => {
    work = mkdtempSync(path.join(tmpdir(), 'lattice-sdk-node-content-'));
    const data = path.join(work, 'data');
    key = createKey(data, 'analysts', 'ana').secret;
    const cfg = path.join(work, 'content.toml');
    writeFileSync(cfg, governedConfig(data, path.join(REPO_ROOT, 'policies'), CONTENT));
    gateway = await startLattice('content', cfg, work);
  });

  after(async () => {
    if (gateway) await stopProcess(gateway);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test('openai: the stream helper gets redacted text and only the allowed call', async () => {
    const oa = new OpenAI({ baseURL: `${gateway.baseUrl}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000 });
    const stream = oa.chat.completions.stream({
      model: 'gpt-4o',
      messages: MSGS,
      tools: [{ type: 'function', function: { name: 'web_search', parameters: { type: 'object' } } }],
    });
    const final = await stream.finalChatCompletion();
    const msg = final.choices[0].message;
    clean(msg.content);
    assert.deepEqual(
      msg.tool_calls.map((c) => [c.function.name, c.function.arguments]),
      [['web_search', '{}']],
    );
    assert.equal(final.choices[0].finish_reason, 'tool_calls');
  });

  test('anthropic: the stream helper gets redacted text and only the allowed tool_use', async () => {
    const an = new Anthropic({ baseURL: gateway.baseUrl, apiKey: key, maxRetries: 0, timeout: 30_000 });
    const stream = an.messages.stream({
      model: 'claude-3-5-haiku-latest',
      max_tokens: 64,
      messages: MSGS,
      tools: [{ name: 'web_search', input_schema: { type: 'object' } }],
    });
    const final = await stream.finalMessage();
    clean(final.content[0].text);
    const uses = final.content.filter((b) => b.type === 'tool_use');
    assert.deepEqual(
      uses.map((b) => [b.name, b.input]),
      [['web_search', {}]],
    );
    assert.equal(final.stop_reason, 'tool_use');
  });
});
