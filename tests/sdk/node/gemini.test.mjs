// Google's `@google/genai` Node SDK, pointed at the gateway, reaches every upstream kind by the
// model name alone: `demo` (the gateway's mock), `gpt-*` (openai), `claude-*` (anthropic),
// `gemini-*` (gemini) and `llama*` (ollama). JSON, streams and multi-turn tool use.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FinishReason, GoogleGenAI } from '@google/genai';

import { SHORT_PROMPT, mockReply, startTopology } from './helpers.mjs';

const MODELS = ['demo', 'gpt-4o-mini', 'claude-3-5-haiku-latest', 'gemini-2.5-flash', 'llama3.2'];
const WEATHER = {
  name: 'get_weather',
  description: 'Current weather in a city',
  parametersJsonSchema: { type: 'object', properties: { city: { type: 'string' } } },
};

describe('@google/genai against every upstream kind', () => {
  let topo;
  let ai;

  before(async () => {
    topo = await startTopology();
    ai = new GoogleGenAI({
      apiKey: 'client-gemini-key',
      httpOptions: { baseUrl: topo.baseUrl, apiVersion: 'v1beta', timeout: 30_000 },
    });
  });

  after(async () => {
    if (topo) await topo.stop();
  });

  for (const model of MODELS) {
    test(`generateContent (${model})`, async () => {
      const r = await ai.models.generateContent({
        model,
        contents: SHORT_PROMPT,
        config: { systemInstruction: 'You are terse.' },
      });
      assert.equal(r.text, mockReply(SHORT_PROMPT));
      assert.equal(r.candidates[0].finishReason, FinishReason.STOP);
      assert.ok(r.usageMetadata.promptTokenCount > 0);
    });

    test(`generateContentStream (${model})`, async () => {
      const stream = await ai.models.generateContentStream({ model, contents: SHORT_PROMPT });
      let text = '';
      let chunks = 0;
      let last;
      for await (const c of stream) {
        text += c.text ?? '';
        chunks += 1;
        last = c;
      }
      assert.ok(chunks > 1, 'streamed, not one answer');
      assert.equal(text, mockReply(SHORT_PROMPT));
      assert.equal(last.candidates[0].finishReason, FinishReason.STOP);
    });

    test(`multi-turn tool use (${model})`, async () => {
      const config = { tools: [{ functionDeclarations: [WEATHER] }] };
      const history = [{ role: 'user', parts: [{ text: 'what is the weather? call:get_weather' }] }];
      const first = await ai.models.generateContent({ model, contents: history, config });
      assert.deepEqual(first.functionCalls.map((c) => c.name), ['get_weather']);
      history.push(first.candidates[0].content);
      history.push({
        role: 'user',
        parts: [
          { functionResponse: { name: 'get_weather', response: { temp_c: 21 } } },
          { text: SHORT_PROMPT },
        ],
      });
      const second = await ai.models.generateContent({ model, contents: history, config });
      assert.equal(second.text, mockReply(SHORT_PROMPT));
      assert.equal(second.functionCalls, undefined);
    });
  }

  test('countTokens (demo, and passed through to a gemini upstream)', async () => {
    for (const model of ['demo', 'gemini-2.5-flash']) {
      const r = await ai.models.countTokens({ model, contents: SHORT_PROMPT });
      assert.equal(r.totalTokens, SHORT_PROMPT.split(' ').length);
    }
  });

  test('an unknown model is a Gemini NOT_FOUND', async () => {
    await assert.rejects(ai.models.generateContent({ model: 'no-such-model', contents: 'hi' }), (e) => {
      assert.equal(e.status, 404);
      return true;
    });
  });
});
