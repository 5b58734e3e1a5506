"""What the semantic cache compares: the last user message, and everything else apart.

Only the last user message is embedded. Everything before it (the system prompt, earlier
turns), the other fields of that message and every parameter stay in the *rest*, which the
exact cache hashes into the partition: a semantic hit never crosses conversations, system
prompts or parameters. Embedding the whole conversation instead lets a long shared system
prompt drown the question, so different questions look alike (docs/benchmarks.md has the
figures).

Correct by construction: the rest is the body with the text taken out and a marker left
where it was, so the body can be rebuilt from (text, rest) and any change outside the text
changes the rest.
"""

from __future__ import annotations

from typing import Any

CHAT, COMPLETIONS = "chat.completions", "completions"


def semantic_text(endpoint: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The text to embed, and the body without it (the rest: the exact cache hashes it, with
    scope, model identity and every non-prompt parameter, into the partition). None: nothing
    to compare (no single user text)."""
    if endpoint == CHAT:
        return _chat(body)
    if endpoint == COMPLETIONS:
        return _completion(body)
    return None  # embeddings: the answer is the input's own vector, nothing to approximate


def _chat(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    taken = _take(last.get("content"))
    if taken is None:
        return None
    text, marker = taken
    rest = {**body, "messages": [*messages[:-1], {**last, "content": marker}]}
    return text, rest


def _completion(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        text, marker = prompt[0], [None]
    elif isinstance(prompt, str):
        text, marker = prompt, None
    else:
        return None  # token arrays, several prompts: no single text
    if not text.strip():
        return None
    return text, {**body, "prompt": marker}


def _take(content: Any) -> tuple[str, Any] | None:
    """The text of a message's content and the marker left in its place.

    A string becomes None (a user message whose content is null is not taken, so None cannot
    stand for a real one). Text parts are joined with newlines and each part's text is
    replaced by its length, so that ["a\\nb", "c"] and ["a", "b\\nc"] stay apart. Content
    with any part that is not text (an image) is not compared.
    """
    if isinstance(content, str):
        return (content, None) if content.strip() else None
    if not isinstance(content, list) or not content:
        return None
    texts: list[str] = []
    marker: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            return None
        text = part.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
        marker.append({**part, "text": len(text)})
    joined = "\n".join(texts)
    return (joined, marker) if joined.strip() else None
