// Identity and Rego denials as the official Node SDKs see them (the Node twin of
// tests/sdk/python/test_identity_policy_sdk.py): typed 401 / 403 errors whose messages carry the
// reason (the policy's reasons for 403), in both dialects.
//
// Its own lattice process: API keys from `lattice keys create`, a copy of the shipped policy
// bundle (policies/), every model on the built-in mock provider.
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

import {
  MOCK_PREFIX,
  REPO_ROOT,
  createKey,
  governedConfig as config,
  latticeKeys,
  startLattice,
  stopProcess,
} from './helpers.mjs';

// A key of the right shape that the gateway never issued.
const UNKNOWN_KEY = `lk_000000000000_${'0'.repeat(64)}`;
const MSGS = [{ role: 'user', content: 'hello' }];
const OPENAI_MODEL = 'gpt-4o'; // research: gpt-*; support: only gpt-4o-mini and demo
const CLAUDE_MODEL = 'claude-3-5-haiku-latest'; // research: claude-*; support: none

// The gateway's message as the SDK parsed it from the error body: OpenAI's
// {"error":{"message"}} (err.error is its inner object) or Anthropic's
// {"type":"error","error":{"type","message"}} (err.error is the whole body).
const detail = (err) => err.error?.error?.message ?? err.error?.message ?? err.message;

function expectError(Cls, status, ...fragments) {
  return (err) => {
    assert.ok(err instanceof Cls, `expected ${Cls.name}, got ${err?.constructor?.name}: ${err}`);
    assert.equal(err.status, status);
    for (const f of fragments) assert.ok(detail(err).includes(f), `${JSON.stringify(f)} not in: ${detail(err)}`);
    return true;
  };
}

// Anthropic's error type in the body, as the dialect requires.
const anthropicError = (Cls, status, type, ...fragments) => (err) => {
  expectError(Cls, status, ...fragments)(err);
  assert.equal(err.error?.error?.type, type, JSON.stringify(err.error));
  return true;
};
const authError = (...fragments) =>
  anthropicError(Anthropic.AuthenticationError, 401, 'authentication_error', ...fragments);

describe('identity and policy denials (node SDKs)', () => {
  let work;
  let gateway;
  const k = {};

  // Clients: `key` null sends no credential at all (the SDKs refuse to build a client without
  // one, so it gets a placeholder whose header is then removed with a null default header).
  const oa = (key) =>
    new OpenAI({
      baseURL: `${gateway.baseUrl}/v1`,
      apiKey: key ?? 'placeholder-removed-below',
      defaultHeaders: key == null ? { Authorization: null } : undefined,
      maxRetries: 0,
      timeout: 30_000,
    });
  const an = (key) =>
    new Anthropic({
      baseURL: gateway.baseUrl,
      apiKey: key ?? 'placeholder-removed-below',
      defaultHeaders: key == null ? { Authorization: null, 'x-api-key': null } : undefined,
      maxRetries: 0,
      timeout: 30_000,
    });
  const chat = (key, model = OPENAI_MODEL) => oa(key).chat.completions.create({ model, messages: MSGS });
  const message = (key, model = CLAUDE_MODEL) => an(key).messages.create({ model, max_tokens: 16, messages: MSGS });

  before(async () => {
    work = mkdtempSync(path.join(tmpdir(), 'lattice-sdk-node-governed-'));
    const data = path.join(work, 'data');
    const policies = path.join(work, 'policies');
    cpSync(path.join(REPO_ROOT, 'policies'), policies, { recursive: true });
    k.research = createKey(data, 'research', 'ana');
    k.support = createKey(data, 'support', 'bo');
    k.revoked = createKey(data, 'research', 'rex');
    latticeKeys(data, 'revoke', k.revoked.id);
    const cfg = path.join(work, 'governed.toml');
    writeFileSync(cfg, config(data, policies));
    gateway = await startLattice('governed', cfg, work);
  });

  after(async () => {
    if (gateway) await stopProcess(gateway);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  describe('openai', () => {
    test('a key of an allowed team -> 200', async () => {
      const { data, response } = await chat(k.research.secret).withResponse();
      assert.equal(response.status, 200);
      assert.ok(data.choices[0].message.content.startsWith(MOCK_PREFIX), data.choices[0].message.content);
    });

    test('no key -> AuthenticationError (401)', async () => {
      await assert.rejects(chat(null), (err) => {
        expectError(OpenAI.AuthenticationError, 401, 'no credential')(err);
        assert.equal(err.code, 'missing_credential');
        return true;
      });
    });

    test('a key the gateway never issued -> AuthenticationError (401)', async () => {
      await assert.rejects(chat(UNKNOWN_KEY), (err) => {
        expectError(OpenAI.AuthenticationError, 401, 'not valid')(err);
        assert.equal(err.code, 'invalid_api_key');
        return true;
      });
    });

    test('a revoked key -> AuthenticationError (401)', async () => {
      await assert.rejects(chat(k.revoked.secret), (err) => {
        expectError(OpenAI.AuthenticationError, 401, 'revoked')(err);
        assert.equal(err.code, 'revoked_api_key');
        return true;
      });
    });

    test('a team denied the model -> PermissionDeniedError (403) with the policy reason', async () => {
      await assert.rejects(
        chat(k.support.secret),
        expectError(OpenAI.PermissionDeniedError, 403, `team "support" may not use model "${OPENAI_MODEL}"`),
      );
    });

    test('the same key on a model its team may use -> 200', async () => {
      const { response } = await chat(k.support.secret, 'gpt-4o-mini').withResponse();
      assert.equal(response.status, 200);
    });
  });

  describe('anthropic', () => {
    test('a key of an allowed team -> 200', async () => {
      const { data, response } = await message(k.research.secret).withResponse();
      assert.equal(response.status, 200);
      assert.ok(data.content[0].text.startsWith('Hello from'), data.content[0].text);
    });

    test('no key -> AuthenticationError (401)', async () => {
      await assert.rejects(message(null), authError('no credential'));
    });

    test('a key the gateway never issued -> AuthenticationError (401)', async () => {
      await assert.rejects(message(UNKNOWN_KEY), authError('not valid'));
      await assert.rejects(message('sk-ant-not-a-gateway-key'), authError());
    });

    test('a revoked key -> AuthenticationError (401)', async () => {
      await assert.rejects(message(k.revoked.secret), authError('revoked'));
    });

    test('a team denied the model -> PermissionDeniedError (403) with the policy reason', async () => {
      const reason = `team "support" may not use model "${CLAUDE_MODEL}"`;
      await assert.rejects(
        message(k.support.secret),
        anthropicError(Anthropic.PermissionDeniedError, 403, 'permission_error', reason),
      );
    });
  });
});
