// The official `openai` Node SDK against the Lattice gateway (OpenAI surface).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { CLIENT_OPENAI_KEY, LONG_PROMPT, mockReply, startTopology, words } from './helpers.mjs';

describe('openai node SDK', () => {
  let topo;
  let client;

  before(async () => {
    topo = await startTopology();
    client = new OpenAI({ baseURL: `${topo.baseUrl}/v1`, apiKey: CLIENT_OPENAI_KEY, maxRetries: 0, timeout: 30_000 });
  });

  after(async () => {
    if (topo) await topo.stop();
  });

  for (const model of ['demo', 'gpt-4o-mini']) {
    test(`chat non-stream (${model})`, async () => {
      const messages = [{ role: 'user', content: LONG_PROMPT }];
      const expected = mockReply(LONG_PROMPT);
      const resp = await client.chat.completions.create({ model, messages });
      assert.equal(resp.object, 'chat.completion');
      assert.equal(resp.choices.length, 1);
      assert.equal(resp.choices[0].message.role, 'assistant');
      assert.equal(resp.choices[0].message.content, expected);
      assert.equal(resp.choices[0].finish_reason, 'stop');
      assert.equal(resp.usage.prompt_tokens, words(LONG_PROMPT));
      assert.equal(resp.usage.completion_tokens, words(expected));
      assert.equal(resp.usage.total_tokens, resp.usage.prompt_tokens + resp.usage.completion_tokens);
    });

    test(`chat stream with include_usage (${model})`, async () => {
      const messages = [{ role: 'user', content: LONG_PROMPT }];
      const expected = mockReply(LONG_PROMPT);
      const stream = await client.chat.completions.create({
        model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      assert.ok(chunks.length > 0, 'no chunks received');

      let text = '';
      const finishReasons = [];
      for (const chunk of chunks) {
        assert.equal(chunk.object, 'chat.completion.chunk');
        for (const choice of chunk.choices) {
          text += choice.delta?.content ?? '';
          if (choice.finish_reason) finishReasons.push(choice.finish_reason);
        }
      }
      assert.equal(text, expected);
      assert.deepEqual(finishReasons, ['stop']);

      const usageIdx = chunks.flatMap((c, i) => (c.usage ? [i] : []));
      assert.deepEqual(usageIdx, [chunks.length - 1], 'exactly one usage chunk, and it is the last');
      const last = chunks.at(-1);
      assert.deepEqual(last.choices, []);
      assert.equal(last.usage.prompt_tokens, words(LONG_PROMPT));
      assert.equal(last.usage.completion_tokens, words(expected));
      assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
    });
  }

  test('unknown model -> NotFoundError (model_not_found)', async () => {
    await assert.rejects(
      client.chat.completions.create({ model: 'no-such-model-anywhere', messages: [{ role: 'user', content: 'hi' }] }),
      (err) => {
        assert.ok(err instanceof OpenAI.NotFoundError, `expected NotFoundError, got ${err?.constructor?.name}: ${err}`);
        assert.equal(err.status, 404);
        assert.equal(err.code, 'model_not_found');
        return true;
      },
    );
  });

  test('upstream 429 is relayed -> RateLimitError (proves gpt-* reaches the upstream)', async () => {
    await assert.rejects(
      client.chat.completions.create({ model: 'gpt-upstream-limited', messages: [{ role: 'user', content: 'hi' }] }),
      (err) => {
        assert.ok(err instanceof OpenAI.RateLimitError, `expected RateLimitError, got ${err?.constructor?.name}: ${err}`);
        assert.equal(err.status, 429);
        return true;
      },
    );
  });

  test('denied model -> PermissionDeniedError', async () => {
    await assert.rejects(
      client.chat.completions.create({ model: 'forbidden-x', messages: [{ role: 'user', content: 'hi' }] }),
      (err) => {
        assert.ok(
          err instanceof OpenAI.PermissionDeniedError,
          `expected PermissionDeniedError, got ${err?.constructor?.name}: ${err}`,
        );
        assert.equal(err.status, 403);
        assert.match(err.message, /blocked by policy/);
        return true;
      },
    );
  });
});
