// The official OpenAI JavaScript SDK against the gateway: chat, streams, embeddings, the
// Responses API and the model routes. Prints one JSON object of what the SDK returned, for
// tests/e2e/test_js_sdk.py to check. Usage: node sdk.mjs BASE_URL CHAT_MODEL EMBED_MODEL
import OpenAI from "openai";

const [base, chatModel, embedModel] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 120_000 });
const messages = [{ role: "user", content: "Say hello in one short sentence." }];

async function chat() {
  const { data, response } = await client.chat.completions
    .create({ model: chatModel, messages, max_tokens: 8, temperature: 0 })
    .withResponse();
  return {
    object: data.object,
    content: data.choices[0].message.content,
    finish_reason: data.choices[0].finish_reason,
    usage: data.usage,
    request_id: response.headers.get("x-request-id"),
  };
}

async function stream(includeUsage) {
  const events = await client.chat.completions.create({
    model: chatModel,
    messages,
    max_tokens: 8,
    temperature: 0,
    stream: true,
    ...(includeUsage ? { stream_options: { include_usage: true } } : {}),
  });
  let text = "";
  let chunks = 0;
  let usage = null;
  let finish = null;
  for await (const chunk of events) {
    chunks += 1;
    text += chunk.choices[0]?.delta?.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
    usage = chunk.usage ?? usage;
  }
  return { text, chunks, usage, finish_reason: finish };
}

async function embeddings() {
  // The SDK asks for base64 and decodes it itself, unless told otherwise.
  const packed = await client.embeddings.create({ model: embedModel, input: ["hello", "world"] });
  const plain = await client.embeddings.create({
    model: embedModel,
    input: "hello",
    encoding_format: "float",
  });
  return {
    count: packed.data.length,
    dimensions: packed.data[0].embedding.length,
    first: packed.data[0].embedding.slice(0, 4),
    plain_first: plain.data[0].embedding.slice(0, 4),
    usage: packed.usage,
  };
}

async function responses() {
  const answer = await client.responses.create({
    model: chatModel,
    input: "Say hello in one short sentence.",
    max_output_tokens: 8,
    temperature: 0,
  });
  const events = await client.responses.create({
    model: chatModel,
    input: "Say hello in one short sentence.",
    max_output_tokens: 8,
    temperature: 0,
    stream: true,
  });
  let deltas = "";
  let last = null;
  for await (const event of events) {
    if (event.type === "response.output_text.delta") deltas += event.delta;
    last = event;
  }
  let missing = null;
  try {
    await client.responses.retrieve("resp_none");
  } catch (err) {
    missing = { status: err.status };
  }
  return {
    object: answer.object,
    status: answer.status,
    text: answer.output_text,
    usage: answer.usage,
    streamed: deltas,
    last_event: last?.type,
    streamed_usage: last?.response?.usage ?? null,
    missing,
  };
}

async function models() {
  const listed = [];
  for await (const model of client.models.list()) listed.push(model.id);
  const one = await client.models.retrieve(chatModel);
  let missing = null;
  try {
    await client.models.retrieve("no-such-model");
  } catch (err) {
    missing = { status: err.status, code: err.code, param: err.param };
  }
  return { listed, one, missing };
}

const results = {
  chat: await chat(),
  stream: await stream(true),
  stream_without_usage: await stream(false),
  embeddings: await embeddings(),
  responses: await responses(),
  models: await models(),
};
process.stdout.write(JSON.stringify(results));
