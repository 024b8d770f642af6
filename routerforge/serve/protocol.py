"""The OpenAI chat-completions request as the proxy needs it: validation, the text the router reads, error bodies.

Only what routing needs is checked (a JSON object with a string `model` and a non-empty `messages` list of
{role, content} objects); every other field goes to the upstream untouched. Errors use OpenAI's body
`{"error": {"message", "type", "param", "code"}}` so OpenAI clients raise their usual exceptions.
"""

from __future__ import annotations

import json


class RequestError(Exception):
    """A request the proxy refuses or cannot serve; carries the HTTP status and OpenAI-style error fields."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, error_type, param, code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def parse_chat_request(raw: bytes) -> dict:
    """The request body as a dict; RequestError(400) naming the field that is missing or wrong."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the request body is not valid JSON ({err}); send a chat-completions JSON object.",
                           code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}.",
                           code="invalid_json")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise RequestError(400, "missing required parameter 'model' (a string such as 'router-default').",
                           param="model", code="missing_required_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "missing required parameter 'messages' (a non-empty list of {role, content}).",
                           param="messages", code="missing_required_parameter")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"messages[{i}] must be an object with a string 'role'.",
                               param=f"messages[{i}].role", code="invalid_value")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise RequestError(400, f"messages[{i}].content must be a string, a list of content parts or null.",
                               param=f"messages[{i}].content", code="invalid_value")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise RequestError(400, "'stream' must be true or false.", param="stream", code="invalid_value")
    return body


def message_text(message: dict) -> str:
    """The text of one message: its string content, or its text parts joined (images and audio are not read)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str))
    return ""


def routing_text(messages: list[dict], mode: str, max_chars: int) -> str:
    """What the router scores: the last user turn (`last_user`) or every turn as `role: text` lines
    (`conversation`), keeping the newest `max_chars` characters (the end of a conversation is what is asked now)."""
    if mode == "last_user":
        users = [m for m in messages if m.get("role") == "user"]
        if not users:
            raise RequestError(400, "the router reads the last user turn, and 'messages' has no message with role "
                                    "'user'.", param="messages", code="invalid_value")
        text = message_text(users[-1])
    else:
        text = "\n".join(f"{m['role']}: {message_text(m)}" for m in messages)
    return text[-max_chars:]
