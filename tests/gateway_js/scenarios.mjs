// One scenario of the official TypeScript SDK against Comptroller's gateway; prints what it saw as JSON.
// Run by tests/test_gateway_js.py: node scenarios.mjs <scenario>, with GATEWAY_URL and GATEWAY_KEY set.
import Anthropic from "@anthropic-ai/sdk";

const scenario = process.argv[2];
const client = new Anthropic({
  baseURL: `${process.env.GATEWAY_URL}/anthropic`,
  apiKey: process.env.GATEWAY_KEY,
  defaultHeaders: { "x-comptroller-feature": "support-bot" },
  maxRetries: Number(process.env.MAX_RETRIES ?? 0),
});
const ask = { role: "user", content: "How should I think about a monthly budget for my support bot?" };
const weather = {
  name: "get_weather",
  description: "The weather in a city",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

function failure(error) {
  return {
    raised: true,
    name: error.constructor.name,
    status: error.status,
    type: error.error?.error?.type,
    message: error.message,
    decision: error.headers?.get?.("x-comptroller-decision") ?? null,
  };
}

const scenarios = {
  async create() {
    const { data, response } = await client.messages
      .create({ model: "claude-sonnet-4-5", max_tokens: 64, messages: [ask] })
      .withResponse();
    return { id: data.id, text: data.content[0].text, usage: data.usage,
             decision: response.headers.get("x-comptroller-decision"), hold: response.headers.get("x-comptroller-hold") };
  },
  async stream() {
    const stream = client.messages.stream({ model: "claude-sonnet-4-5", max_tokens: 64, messages: [ask] });
    let text = "";
    stream.on("text", (delta) => { text += delta; });
    const final = await stream.finalMessage();
    return { id: final.id, text, finalText: final.content[0].text, usage: final.usage };
  },
  async tools() {
    const first = await client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 256, messages: [ask], tools: [weather] });
    const call = first.content.find((block) => block.type === "tool_use");
    const second = await client.messages.create({
      model: "claude-sonnet-4-5", max_tokens: 256, tools: [weather],
      messages: [ask, { role: "assistant", content: first.content },
                 { role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: "Sunny, 21 °C" }] }],
    });
    return { stop: first.stop_reason, tool: call.name, input: call.input, ids: [first.id, second.id] };
  },
  async denied() {
    try {
      await client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 1024, messages: [ask] });
      return { raised: false };
    } catch (error) {
      return failure(error);
    }
  },
  async upstream_error() {
    try {
      await client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 64,
                                     messages: [{ role: "user", content: "FAIL_CALL please" }] });
      return { raised: false };
    } catch (error) {
      return failure(error);
    }
  },
  async disconnect() {
    const stream = await client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 64, messages: [ask], stream: true });
    let deltas = 0;
    for await (const event of stream) {
      if (event.type === "content_block_delta" && ++deltas === 3) {
        stream.controller.abort(); // hang up mid-stream
        break;
      }
    }
    return { deltas };
  },
};

const result = await scenarios[scenario]();
process.stdout.write(JSON.stringify(result));
