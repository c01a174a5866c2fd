// The official `@anthropic-ai/sdk` Node SDK against the Lattice gateway (Anthropic surface).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';

import { CLIENT_ANTHROPIC_KEY, LONG_PROMPT, mockReply, startTopology, words } from './helpers.mjs';

const textOf = (message) =>
  message.content
    .filter((b) => b.type === 'text')
    .map((b) => b.text)
    .join('');

describe('anthropic node SDK', () => {
  let topo;
  let client;

  before(async () => {
    topo = await startTopology();
    client = new Anthropic({ baseURL: topo.baseUrl, apiKey: CLIENT_ANTHROPIC_KEY, maxRetries: 0, timeout: 30_000 });
  });

  after(async () => {
    if (topo) await topo.stop();
  });

  for (const model of ['demo', 'claude-3-5-haiku-latest']) {
    test(`messages non-stream (${model})`, async () => {
      const expected = mockReply(LONG_PROMPT);
      const msg = await client.messages.create({
        model,
        max_tokens: 256,
        messages: [{ role: 'user', content: LONG_PROMPT }],
      });
      assert.equal(msg.type, 'message');
      assert.equal(msg.role, 'assistant');
      assert.equal(textOf(msg), expected);
      assert.equal(msg.stop_reason, 'end_turn');
      assert.equal(msg.usage.input_tokens, words(LONG_PROMPT));
      assert.equal(msg.usage.output_tokens, words(expected));
    });

    test(`messages.stream helper: text events + finalMessage (${model})`, async () => {
      const expected = mockReply(LONG_PROMPT);
      const stream = client.messages.stream({
        model,
        max_tokens: 256,
        messages: [{ role: 'user', content: LONG_PROMPT }],
      });
      let text = '';
      let lastSnapshot = '';
      stream.on('text', (delta, snapshot) => {
        text += delta;
        lastSnapshot = snapshot;
      });
      const final = await stream.finalMessage();
      assert.equal(text, expected);
      assert.equal(lastSnapshot, expected);
      assert.equal(textOf(final), expected);
      assert.equal(final.stop_reason, 'end_turn');
      assert.equal(final.usage.output_tokens, words(expected));
      assert.equal(final.usage.input_tokens, words(LONG_PROMPT));
    });

    test(`raw stream: event types in order (${model})`, async () => {
      const expected = mockReply(LONG_PROMPT);
      const stream = await client.messages.create({
        model,
        max_tokens: 256,
        messages: [{ role: 'user', content: LONG_PROMPT }],
        stream: true,
      });
      const events = [];
      for await (const event of stream) events.push(event);
      const types = events.map((e) => e.type);
      // The SDK drops `ping` events itself (core/streaming: sse.event === 'ping'
      // is skipped), so the SDK-visible sequence has no ping.
      const nDeltas = types.length - 5;
      assert.ok(nDeltas >= 1, `event types: ${types.join(',')}`);
      assert.deepEqual(types, [
        'message_start',
        'content_block_start',
        ...Array(nDeltas).fill('content_block_delta'),
        'content_block_stop',
        'message_delta',
        'message_stop',
      ]);
      assert.equal(events[0].message.usage.input_tokens, words(LONG_PROMPT));
      const deltas = events.filter((e) => e.type === 'content_block_delta');
      assert.equal(deltas.map((d) => d.delta.text).join(''), expected);
      assert.equal(deltas.length, words(expected), 'one delta per word');
      const messageDelta = events.at(-2);
      assert.equal(messageDelta.delta.stop_reason, 'end_turn');
      assert.equal(messageDelta.usage.output_tokens, words(expected));
    });
  }

  test('unknown model -> NotFoundError', async () => {
    await assert.rejects(
      client.messages.create({
        model: 'no-such-model-anywhere',
        max_tokens: 16,
        messages: [{ role: 'user', content: 'hi' }],
      }),
      (err) => {
        assert.ok(err instanceof Anthropic.NotFoundError, `expected NotFoundError, got ${err?.constructor?.name}: ${err}`);
        assert.equal(err.status, 404);
        assert.equal(err.error?.type, 'error');
        assert.equal(err.error?.error?.type, 'not_found_error');
        return true;
      },
    );
  });
});
