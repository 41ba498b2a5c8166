"""A model's chat template, rendered as llama-cpp-python's server renders it, to continue an answer there.

llama-cpp-python's chat endpoint always closes a trailing assistant message and opens a new turn,
so a continuation goes to `/v1/completions` with the prompt rendered here: the conversation before
the answer with the generation prompt, then the answer so far, left open (what llama.cpp's
llama-server does for a trailing assistant message). The template is the GGUF's
`tokenizer.chat_template`, read with llama-cpp-python itself (the model's vocabulary only) and
rendered by its own `Jinja2ChatFormatter`, the formatter its server uses for that model
(`Llama.__init__` picks "chat_template.default" unless `guess_chat_format_from_gguf_metadata`
names a built-in format; llama_cpp/llama.py). Needs the `embedded` extra (llama-cpp-python).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatTemplate:
    """Renders a conversation into the engine's prompt text; `stop` ends a turn (the EOS token's text)."""

    render: Callable[[list[dict[str, Any]]], str]
    stop: str

    def original_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The prompt the engine built for the conversation before the answer (the original job's)."""
        return self.render(messages[:-1])

    def continuation_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The conversation before the answer, the assistant's turn opened, and the answer so far."""
        return self.original_prompt(messages) + str(messages[-1].get("content") or "")


def load(gguf: str) -> tuple[ChatTemplate | None, str]:
    """The chat template of the model in `gguf`, or None and why not."""
    try:
        import llama_cpp
        from llama_cpp import llama_chat_format
    except ImportError:
        return None, "llama-cpp-python is not installed here (pip install '.[embedded]') to render its template"
    try:
        with _stderr_logged():
            model = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    except (ValueError, OSError, RuntimeError) as exc:
        return None, f"OPENAI_GGUF {gguf!r} could not be read: {exc}"
    metadata = model.metadata
    template = metadata.get("tokenizer.chat_template")
    if not template:
        return None, f"{gguf} has no chat template"
    if (builtin := llama_chat_format.guess_chat_format_from_gguf_metadata(metadata)) is not None:
        return None, f"llama-cpp-python formats this model with its built-in {builtin!r} format, not its template"
    bos, eos = model.token_bos(), model.token_eos()
    eos_text = model.detokenize([eos], special=True).decode(errors="replace") if eos >= 0 else ""
    bos_text = model.detokenize([bos], special=True).decode(errors="replace") if bos >= 0 else ""
    formatter = llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text,
                                                      add_generation_prompt=True)  # fmt: skip

    def render(messages: list[dict[str, Any]]) -> str:
        return str(formatter(messages=messages).prompt)  # type: ignore[arg-type]

    return ChatTemplate(render, eos_text), f"{gguf}'s chat template"


@contextlib.contextmanager
def _stderr_logged() -> Iterator[None]:
    """Keep what llama.cpp writes to file descriptor 2 out of the operator's terminal: it writes
    some warnings there whatever `verbose` says (its context's "n_ctx_seq > n_ctx_train" for a
    vocabulary-only model). It is logged at DEBUG instead. Called once, while the worker starts."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            if text := sink.read().decode(errors="replace").strip():
                logger.debug("llama.cpp, reading the model's vocabulary: %s", text)
