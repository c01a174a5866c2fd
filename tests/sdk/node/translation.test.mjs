// The same agent code on the official Node SDKs (`openai`, `@anthropic-ai/sdk`) reaches an
// upstream of either dialect by changing only the model name: `gpt-*` is an openai-kind
// upstream, `claude-*` an anthropic-kind one, `demo` the gateway's own mock. A call whose client
// and upstream dialects differ is translated: JSON, streams and multi-turn tool use.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

import { CLIENT_ANTHROPIC_KEY, CLIENT_OPENAI_KEY, SHORT_PROMPT, mockReply, startTopology } from './helpers.mjs';

const MODELS = ['demo', 'gpt-4o-mini', 'claude-3-5-haiku-latest', 'gemini-2.5-flash', 'llama3.2'];
const OA_TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Current weather in a city',
      parameters: { type: 'object', properties: { city: { type: 'string' } } },
    },
  },
];
const AN_TOOLS = [
  {
    name: 'get_weather',
    description: 'Current weather in a city',
    input_schema: { type: 'object', properties: { city: { type: 'string' } } },
  },
];

describe('translation across dialects (node SDKs)', () => {
  let topo;
  let oa;
  let an;

  before(async () => {
    topo = await startTopology();
    oa = new OpenAI({ baseURL: `${topo.baseUrl}/v1`, apiKey: CLIENT_OPENAI_KEY, maxRetries: 0, timeout: 30_000 });
    an = new Anthropic({ baseURL: topo.baseUrl, apiKey: CLIENT_ANTHROPIC_KEY, maxRetries: 0, timeout: 30_000 });
  });

  after(async () => {
    if (topo) await topo.stop();
  });

  for (const model of MODELS) {
    test(`openai SDK: multi-turn tool use (${model})`, async () => {
      const messages = [{ role: 'user', content: 'what is the weather? call:get_weather' }];
      const first = await oa.chat.completions.create({ model, messages, tools: OA_TOOLS });
      const choice = first.choices[0];
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.deepEqual(choice.message.tool_calls.map((c) => c.function.name), ['get_weather']);
      assert.deepEqual(JSON.parse(choice.message.tool_calls[0].function.arguments), {});
      messages.push(choice.message);
      for (const c of choice.message.tool_calls) {
        messages.push({ role: 'tool', tool_call_id: c.id, content: '{"temp_c": 21}' });
      }
      messages.push({ role: 'user', content: SHORT_PROMPT });
      const second = await oa.chat.completions.create({ model, messages, tools: OA_TOOLS });
      assert.equal(second.choices[0].message.content, mockReply(SHORT_PROMPT));
      assert.equal(second.choices[0].finish_reason, 'stop');
    });

    test(`openai SDK: streamed tool call (${model})`, async () => {
      const runner = oa.chat.completions.stream({
        model,
        messages: [{ role: 'user', content: 'weather please call:get_weather' }],
        tools: OA_TOOLS,
      });
      const final = await runner.finalChatCompletion();
      assert.equal(final.choices[0].finish_reason, 'tool_calls');
      assert.deepEqual(final.choices[0].message.tool_calls.map((c) => c.function.name), ['get_weather']);
      assert.equal(final.choices[0].message.content, mockReply('weather please call:get_weather'));
    });

    test(`anthropic SDK: multi-turn tool use (${model})`, async () => {
      const messages = [{ role: 'user', content: 'what is the weather? call:get_weather' }];
      const first = await an.messages.create({ model, max_tokens: 256, messages, tools: AN_TOOLS });
      assert.equal(first.stop_reason, 'tool_use');
      const uses = first.content.filter((b) => b.type === 'tool_use');
      assert.deepEqual(uses.map((u) => u.name), ['get_weather']);
      messages.push({ role: 'assistant', content: first.content });
      messages.push({
        role: 'user',
        content: [
          ...uses.map((u) => ({ type: 'tool_result', tool_use_id: u.id, content: '{"temp_c": 21}' })),
          { type: 'text', text: SHORT_PROMPT },
        ],
      });
      const second = await an.messages.create({ model, max_tokens: 256, messages, tools: AN_TOOLS });
      const text = second.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
      assert.equal(text, mockReply(SHORT_PROMPT));
      assert.equal(second.stop_reason, 'end_turn');
    });

    test(`anthropic SDK: stream (${model})`, async () => {
      const stream = an.messages.stream({
        model,
        max_tokens: 256,
        messages: [{ role: 'user', content: 'weather please call:get_weather' }],
        tools: AN_TOOLS,
      });
      const final = await stream.finalMessage();
      assert.equal(final.stop_reason, 'tool_use');
      const text = final.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
      assert.equal(text, mockReply('weather please call:get_weather'));
      assert.deepEqual(final.content.filter((b) => b.type === 'tool_use').map((b) => b.name), ['get_weather']);
      assert.ok(final.usage.output_tokens > 0);
    });
  }

  test('openai SDK: what Anthropic cannot do is refused, in OpenAI terms', async () => {
    await assert.rejects(
      oa.chat.completions.create({ model: 'claude-3-5-haiku-latest', messages: [{ role: 'user', content: 'hi' }], n: 2 }),
      (e) => e instanceof OpenAI.BadRequestError && e.code === 'unsupported_parameter' && /`n`/.test(e.message),
    );
  });
});
