"""OpenAI-style answers for go-livepeer: SSE chunks for streams, one JSON object otherwise.

Every chunk carries `choices[0]` (go-livepeer indexes it unchecked) and `usage`; only the last
one has a non-empty `finish_reason`. Chunks are built by string templates: this runs per token.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from common.errors import RunnerError
from common.events import Done, Failed, Tokens, ToolCalls

DONE_LINE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _usage(prompt: int, completion: int) -> str:
    return f'{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{prompt + completion}}}'


@dataclass(frozen=True)
class Completion:
    """Identity of one answer: the id, model and creation time every chunk repeats."""

    id: str
    model: str
    created: int

    @classmethod
    def new(cls, model: str) -> Completion:
        """A fresh completion id for `model`, created now."""
        return cls(f"chatcmpl-{uuid.uuid4().hex}", model, int(time.time()))

    def _head(self) -> str:
        return f'{{"id":{json.dumps(self.id)},"model":{json.dumps(self.model)},"created":{self.created},'

    def content_chunk(self, text_json: str, completion_tokens: int) -> bytes:
        """One SSE event carrying some text (already a JSON string literal) and the running usage.

        Ollama reports the prompt's token count only at the end, so running chunks carry 0 for it.
        """
        return (
            f'data: {self._head()}"usage":{_usage(0, completion_tokens)},'
            f'"choices":[{{"index":0,"finish_reason":"","delta":{{"role":"assistant","content":{text_json}}}}}]}}\n\n'
        ).encode()

    def final_chunk(self, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The last SSE event: empty delta, the finish reason and the final usage."""
        return (
            f'data: {self._head()}"usage":{_usage(prompt_tokens, completion_tokens)},'
            f'"choices":[{{"index":0,"finish_reason":{json.dumps(finish_reason)},'
            f'"delta":{{"role":"assistant","content":""}}}}]}}\n\n'
        ).encode()

    def answer(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
        """The whole non-streaming answer."""
        return {
            "id": self.id,
            "model": self.model,
            "created": self.created,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "choices": [
                {"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": text}}
            ],
        }


class LlmAnswer:
    """An answer to go-livepeer's /llm in the shapes above (the request flow's view of Completion)."""

    def __init__(self, model: str) -> None:
        self.completion = Completion.new(model)

    def content(self, event: Tokens, sent_tokens: int) -> bytes:
        """A content chunk with the running usage."""
        return self.completion.content_chunk(event.text_json, sent_tokens)

    def tool_calls(self, event: ToolCalls) -> bytes:
        """Nothing: /llm never offers tools, so no tool call ever comes."""
        return b""

    def end(self, done: Done, sent_tokens: int) -> bytes:
        """The final chunk (finish_reason and usage; "error" for an interrupted generation), `[DONE]`."""
        return self.completion.final_chunk(done.finish_reason, done.prompt_tokens, done.completion_tokens) + DONE_LINE

    def broken(self, failed: Failed, sent_tokens: int) -> bytes:
        """A failure after the first chunk: a final chunk with finish_reason "error", never an error-only one."""
        return self.completion.final_chunk("error", 0, sent_tokens) + DONE_LINE

    def unfinished(self, done: Done) -> RunnerError | None:
        """None: go-livepeer gets what was generated, finish_reason "error" telling it was cut."""
        return None

    def answer(self, text: str, calls: list[dict[str, Any]], done: Done) -> dict[str, object]:
        """The whole non-streaming answer."""
        return self.completion.answer(text, done.finish_reason, done.prompt_tokens, done.completion_tokens)
