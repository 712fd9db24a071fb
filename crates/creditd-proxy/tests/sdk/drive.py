"""Drives creditd's metering proxy with the official `openai` and `anthropic`
SDKs, unchanged, and prints one JSON line per case for tests/sdk.rs to check.

Usage: drive.py BASE_URL TOKEN EMPTY_TOKEN LIMITED_TOKEN SUSPENDED_TOKEN

Each case tags its request (`tag:<case>` in the prompt) so that the test can
find what the stand-in provider sent and compare it with the bytes the SDK
received.
"""

import base64
import json
import sys
import traceback

import anthropic
import openai

BASE, TOKEN, EMPTY, LIMITED, SUSPENDED = sys.argv[1:6]
GPT = "gpt-4o"
CLAUDE = "claude-sonnet-4-5"
HEADERS = {"x-creditd-project": "sdk", "x-creditd-conversation": "conv-sdk"}


def oa(token=TOKEN):
    return openai.OpenAI(base_url=BASE + "/openai/v1", api_key=token, max_retries=0, default_headers=HEADERS)


def an(token=TOKEN):
    return anthropic.Anthropic(base_url=BASE + "/anthropic", api_key=token, max_retries=0, default_headers=HEADERS)


def report(case, **fields):
    fields["case"] = case
    print(json.dumps(fields), flush=True)


def raw(case, http_response, body):
    report(
        case,
        request_id=http_response.headers.get("x-creditd-request-id"),
        credits=http_response.headers.get("x-creditd-credits"),
        available=http_response.headers.get("x-creditd-available"),
        raw=base64.b64encode(body).decode(),
    )


def chat_messages(tag, extra=""):
    return [{"role": "user", "content": f"Say something. tag:{tag} {extra}"}]


def case_chat_whole():
    r = oa().chat.completions.with_raw_response.create(model=GPT, messages=chat_messages("chat_whole"), max_tokens=50)
    completion = r.parse()
    assert completion.choices[0].message.content == "The quick brown fox jumps over the lazy dog."
    assert completion.usage.prompt_tokens == 42
    raw("chat_whole", r.http_response, r.http_response.content)


def case_chat_stream_raw():
    with oa().chat.completions.with_streaming_response.create(
        model=GPT, messages=chat_messages("chat_stream_raw"), max_tokens=50, stream=True
    ) as r:
        body = b"".join(r.iter_bytes())
        raw("chat_stream_raw", r.http_response, body)


def case_chat_stream_sdk():
    stream = oa().chat.completions.create(
        model=GPT, messages=chat_messages("chat_stream_sdk"), max_tokens=50, stream=True
    )
    text, usage_seen = "", False
    for chunk in stream:
        usage_seen = usage_seen or chunk.usage is not None
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == "The quick brown fox jumps over the lazy dog.", text
    assert not usage_seen, "the usage chunk the client did not ask for is left out"
    report("chat_stream_sdk", request_id=stream.response.headers.get("x-creditd-request-id"), text=text)


def case_chat_stream_usage():
    stream = oa().chat.completions.create(
        model=GPT,
        messages=chat_messages("chat_stream_usage"),
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
    assert usage is not None and usage.prompt_tokens == 42 and usage.completion_tokens == 9
    report("chat_stream_usage", request_id=stream.response.headers.get("x-creditd-request-id"))


def case_responses_whole():
    r = oa().responses.with_raw_response.create(model=GPT, input="Hello tag:responses_whole", max_output_tokens=50)
    response = r.parse()
    assert response.output_text == "The quick brown fox jumps over the lazy dog."
    assert response.usage.input_tokens == 42
    raw("responses_whole", r.http_response, r.http_response.content)


def case_responses_stream():
    with oa().responses.with_streaming_response.create(
        model=GPT, input="Hello tag:responses_stream_raw", max_output_tokens=50, stream=True
    ) as r:
        raw("responses_stream_raw", r.http_response, b"".join(r.iter_bytes()))
    stream = oa().responses.create(model=GPT, input="Hello tag:responses_stream_sdk", stream=True)
    text, last = "", None
    for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        last = event
    assert text == "The quick brown fox jumps over the lazy dog."
    assert last.type == "response.completed" and last.response.usage.output_tokens == 9
    report("responses_stream_sdk", request_id=stream.response.headers.get("x-creditd-request-id"))


def claude_messages(tag, extra=""):
    return [{"role": "user", "content": f"Hello. tag:{tag} {extra}"}]


def case_messages_whole():
    r = an().messages.with_raw_response.create(model=CLAUDE, max_tokens=50, messages=claude_messages("messages_whole"))
    message = r.parse()
    assert message.content[0].text == "The quick brown fox jumps over the lazy dog."
    assert message.usage.cache_creation_input_tokens == 6
    raw("messages_whole", r.http_response, r.http_response.content)


def case_messages_stream():
    with an().messages.with_streaming_response.create(
        model=CLAUDE, max_tokens=50, messages=claude_messages("messages_stream_raw"), stream=True
    ) as r:
        raw("messages_stream_raw", r.http_response, b"".join(r.iter_bytes()))
    with an().messages.stream(model=CLAUDE, max_tokens=50, messages=claude_messages("messages_stream_sdk")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers.get("x-creditd-request-id")
    assert text == "The quick brown fox jumps over the lazy dog."
    assert final.usage.output_tokens == 9 and final.usage.input_tokens == 32
    report("messages_stream_sdk", request_id=request_id)


def case_disconnects():
    """The client reads three words of a slow stream, then closes it."""
    stream = oa().chat.completions.create(
        model=GPT, messages=chat_messages("disconnect_chat", "scenario:slow"), max_tokens=50, stream=True
    )
    words = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            words += 1
            if words == 3:
                break
    stream.close()
    report("disconnect_chat", request_id=stream.response.headers.get("x-creditd-request-id"), words=words)

    with an().messages.stream(
        model=CLAUDE, max_tokens=50, messages=claude_messages("disconnect_messages", "scenario:slow")
    ) as stream:
        words = 0
        for _ in stream.text_stream:
            words += 1
            if words == 3:
                break
        request_id = stream.response.headers.get("x-creditd-request-id")
    report("disconnect_messages", request_id=request_id, words=words)


def expect_error(case, call, expected):
    try:
        call()
    except expected as e:
        report(
            case,
            error=type(e).__name__,
            status=e.status_code,
            retry_after=e.response.headers.get("retry-after"),
            request_id=e.response.headers.get("x-creditd-request-id"),
        )
        return
    raise AssertionError(f"{case}: no {expected.__name__}")


def case_refusals():
    msgs = chat_messages("refused")
    expect_error("openai_402", lambda: oa(EMPTY).chat.completions.create(model=GPT, messages=msgs), openai.APIStatusError)
    expect_error(
        "anthropic_402",
        lambda: an(EMPTY).messages.create(model=CLAUDE, max_tokens=50, messages=claude_messages("refused")),
        anthropic.PaymentRequiredError,
    )
    expect_error(
        "openai_401", lambda: oa("ct_bad_key").chat.completions.create(model=GPT, messages=msgs), openai.AuthenticationError
    )
    expect_error(
        "anthropic_401",
        lambda: an("ct_bad_key").messages.create(model=CLAUDE, max_tokens=50, messages=claude_messages("refused")),
        anthropic.AuthenticationError,
    )
    expect_error(
        "openai_400_unknown_model",
        lambda: oa().chat.completions.create(model="gpt-nope", messages=msgs),
        openai.BadRequestError,
    )
    expect_error(
        "openai_403",
        lambda: oa(SUSPENDED).responses.create(model=GPT, input="hi tag:refused"),
        openai.PermissionDeniedError,
    )
    expect_error(
        "anthropic_403",
        lambda: an(SUSPENDED).messages.create(model=CLAUDE, max_tokens=50, messages=claude_messages("refused")),
        anthropic.PermissionDeniedError,
    )
    # One request a minute: the first passes, the second is creditd's 429.
    oa(LIMITED).chat.completions.create(model=GPT, messages=chat_messages("limited_first"), max_tokens=20)
    expect_error(
        "openai_429",
        lambda: oa(LIMITED).chat.completions.create(model=GPT, messages=msgs, max_tokens=20),
        openai.RateLimitError,
    )
    expect_error(
        "anthropic_429",
        lambda: an(LIMITED).messages.create(model=CLAUDE, max_tokens=20, messages=claude_messages("refused")),
        anthropic.RateLimitError,
    )
    # The provider's own refusal passes through.
    expect_error(
        "upstream_429",
        lambda: oa().chat.completions.create(model=GPT, messages=chat_messages("upstream", "scenario:upstream_429")),
        openai.RateLimitError,
    )
    expect_error(
        "upstream_500",
        lambda: an().messages.create(
            model=CLAUDE, max_tokens=20, messages=claude_messages("upstream", "scenario:upstream_500")
        ),
        anthropic.InternalServerError,
    )


CASES = [
    case_chat_whole,
    case_chat_stream_raw,
    case_chat_stream_sdk,
    case_chat_stream_usage,
    case_responses_whole,
    case_responses_stream,
    case_messages_whole,
    case_messages_stream,
    case_disconnects,
    case_refusals,
]

if __name__ == "__main__":
    failed = 0
    for case in CASES:
        try:
            case()
        except Exception:
            failed += 1
            report(case.__name__, failure=traceback.format_exc())
    report("done", failed=failed, versions={"openai": openai.__version__, "anthropic": anthropic.__version__})
    sys.exit(1 if failed else 0)
