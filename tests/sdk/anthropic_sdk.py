"""The official Anthropic Python SDK against the gateway's Anthropic front (run by
tests/gateway_anthropic_sdk.rs, which starts the gateways and the Kiro mock).

Environment: GATEWAY_URL, GATEWAY_KEY (the main gateway and its client key), THROTTLED_URL (a
gateway whose only account is rate limited), SUSPENDED_URL (one whose only account is
suspended). Prints one JSON object with what the Rust side checks further; exits non-zero on
the first failed check.
"""

import json
import os
import sys

import anthropic

MODEL = "claude-sonnet-4-5"
URL = os.environ["GATEWAY_URL"]
KEY = os.environ["GATEWAY_KEY"]


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def client(url=URL, key=KEY):
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)


def expect_error(cls, call, what):
    try:
        call()
    except cls as error:
        return error
    except Exception as error:  # noqa: BLE001 - the wrong class is the failure reported
        check(False, f"{what}: expected {cls.__name__}, got {type(error).__name__}: {error}")
    check(False, f"{what}: expected {cls.__name__}, got no error")


c = client()
hello = [{"role": "user", "content": "Hello"}]
out = {}

# create
message = c.messages.create(model=MODEL, max_tokens=256, messages=hello)
check(message.type == "message" and message.role == "assistant", f"a message: {message}")
check(message.content[0].type == "text", f"a text block: {message.content}")
check(message.content[0].text == "Hello from Kiro", f"the text: {message.content}")
check(message.stop_reason == "end_turn", f"stop_reason: {message.stop_reason}")
check(message.model == MODEL, f"model echoed: {message.model}")
check((message._request_id or "").startswith("req_"), f"a request id: {message._request_id}")
check(message.usage.input_tokens > 0 and message.usage.output_tokens > 0, f"usage: {message.usage}")

# stream: the SDK's stream helper checks the event order as it accumulates the message
with c.messages.stream(model=MODEL, max_tokens=256, messages=hello) as stream:
    events = [event.type for event in stream]
    final = stream.get_final_message()
check(events[0] == "message_start" and events[-1] == "message_stop", f"events: {events}")
check("content_block_delta" in events, f"deltas: {events}")
check(final.content[0].text == "Hello from Kiro", f"streamed text: {final.content}")
out["stream_events"] = events

# the low-level stream too (raw events, as Claude Code reads them)
raw = c.messages.create(model=MODEL, max_tokens=256, messages=hello, stream=True)
raw_types = [event.type for event in raw]
check(raw_types[0] == "message_start" and raw_types[-1] == "message_stop", f"raw: {raw_types}")

# a tool-use round trip
tools = [{
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
question = {"role": "user", "content": "What is the weather in Paris?"}
with c.messages.stream(model=MODEL, max_tokens=256, tools=tools, messages=[question]) as stream:
    call_message = stream.get_final_message()
check(call_message.stop_reason == "tool_use", f"tool stop_reason: {call_message.stop_reason}")
calls = [b for b in call_message.content if b.type == "tool_use"]
check(len(calls) == 1 and calls[0].name == "get_weather", f"one tool call: {call_message.content}")
check(calls[0].input == {"city": "Paris"}, f"the input, streamed in fragments: {calls[0].input}")
answer = c.messages.create(
    model=MODEL,
    max_tokens=256,
    tools=tools,
    messages=[
        question,
        {"role": "assistant", "content": call_message.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "18 °C, sunny"}]},
    ],
)
check(answer.content[0].text == "It is 18 °C and sunny in Paris.", f"after the tool: {answer.content}")
out["tool_use_id"] = calls[0].id

# thinking
thought = c.messages.create(
    model=MODEL, max_tokens=2048, messages=hello, thinking={"type": "enabled", "budget_tokens": 1024}
)
check(thought.content[0].type == "thinking", f"a thinking block first: {thought.content}")
check(thought.content[0].thinking == "A greeting: a short, friendly answer is enough.", f"{thought.content}")
check(thought.content[1].type == "text" and thought.content[1].text == "Hello! How can I help?", f"{thought.content}")
with c.messages.stream(
    model=MODEL, max_tokens=2048, messages=hello, thinking={"type": "enabled", "budget_tokens": 1024}
) as stream:
    streamed_thought = stream.get_final_message()
check(streamed_thought.content[0].type == "thinking", f"streamed thinking: {streamed_thought.content}")

# count_tokens and models
counted = c.messages.count_tokens(model=MODEL, messages=hello)
check(counted.input_tokens > 0, f"count_tokens: {counted}")
models = [m.id for m in c.models.list()]
check(any(m.startswith("claude-sonnet-4-5") for m in models), f"models: {models}")
out["models"] = models

# errors surface as the SDK's exception classes
expect_error(anthropic.AuthenticationError,
             lambda: client(key="not-a-client-key").messages.create(model=MODEL, max_tokens=16, messages=hello),
             "a wrong client key")
error = expect_error(anthropic.BadRequestError,
                     lambda: c.messages.create(model="gpt-4o", max_tokens=16, messages=hello),
                     "an unknown model")
check("claude-sonnet-4-5" in str(error), f"the error names the known models: {error}")
expect_error(anthropic.BadRequestError,
             lambda: c.messages.create(model=MODEL, max_tokens=16, messages=[]),
             "no messages")
error = expect_error(anthropic.RateLimitError,
                     lambda: client(url=os.environ["THROTTLED_URL"]).messages.create(model=MODEL, max_tokens=16, messages=hello),
                     "every account rate limited")
check(error.response.headers.get("retry-after") is not None, "retry-after on a 429")
error = expect_error(anthropic.OverloadedError,
                     lambda: client(url=os.environ["SUSPENDED_URL"]).messages.create(model=MODEL, max_tokens=16, messages=hello),
                     "no account can serve")
check(error.status_code == 529, f"529: {error.status_code}")
check(error.response.reason_phrase == "Overloaded", f"reason phrase: {error.response.reason_phrase!r}")

print(json.dumps(out))
