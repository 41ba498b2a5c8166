"""What an OpenAI-compatible engine is, and so how it continues an answer and reports its limits.

The engine is OPENAI_ENGINE, or (auto) what its /v1/models says in `owned_by`: "vllm" (vLLM's
ModelCard, vllm/entrypoints/openai/protocol.py), "sglang" (SGLang's ModelCard), "llamacpp"
(llama.cpp's tools/server), "me" (llama-cpp-python, llama_cpp/server/app.py `get_models`).
Extra request fields go only to the engines that take them (vLLM validates its requests).

Continuing a trailing assistant message:
- vLLM, SGLang: `continue_final_message: true` with `add_generation_prompt: false` (vLLM refuses
  both true: protocol.py `ChatCompletionRequest.check_generation_prompt`).
- llama.cpp's llama-server: prefills a trailing assistant message by default (`prefill_assistant`;
  `--no-prefill-assistant` turns it off, and then answers are restarted: don't).
- llama-cpp-python: its chat handlers always close the last message and open a new assistant
  turn (`Jinja2ChatFormatter` renders with `add_generation_prompt=True`, `format_chatml` appends
  an empty assistant turn; llama_cpp/llama_chat_format.py), so the worker renders the prompt
  itself with the model's chat template (worker.chat_template) and asks `/v1/completions`.
- anything else: not established, so refused.
"""

from __future__ import annotations

import re
from typing import Any

VLLM, SGLANG, LLAMA_CPP, LLAMA_CPP_PYTHON, OTHER = "vllm", "sglang", "llama.cpp", "llama-cpp-python", "other"
_OWNED_BY = {"vllm": VLLM, "sglang": SGLANG, "llamacpp": LLAMA_CPP, "me": LLAMA_CPP_PYTHON}


def detect(setting: str, owned_by: list[str]) -> str:
    """The engine's flavour: OPENAI_ENGINE unless `auto`, else read from /v1/models' `owned_by`."""
    if setting != "auto":
        return setting
    found = {_OWNED_BY.get(owner, OTHER) for owner in owned_by}
    return found.pop() if len(found) == 1 else OTHER


def verdict(flavour: str, template_note: str | None) -> tuple[bool, str]:
    """(whether this engine continues a trailing assistant message, why) for the fleet record.

    `template_note` is for llama-cpp-python: None when the worker has the model's chat template,
    else why not.
    """
    if flavour in (VLLM, SGLANG):
        return True, f"{flavour} continues the answer (continue_final_message)"
    if flavour == LLAMA_CPP:
        return True, "llama-server prefills a trailing assistant message (unless run with --no-prefill-assistant)"
    if flavour == LLAMA_CPP_PYTHON:
        if template_note is None:
            return True, "llama-cpp-python: the prompt is rendered here with the model's chat template (OPENAI_GGUF)"
        return False, f"llama-cpp-python closes a trailing assistant message; {template_note}"
    return False, "not established for this engine: set OPENAI_ENGINE if it is vLLM, SGLang or llama.cpp"


def continuation_fields(flavour: str) -> dict[str, Any]:
    """The chat request's extra fields for a continuation on this engine."""
    if flavour in (VLLM, SGLANG):
        return {"continue_final_message": True, "add_generation_prompt": False}
    return {}


# The refusals of a prompt + max_tokens beyond the context, as each engine words them, with the
# context (m), the prompt's tokens (p) and how many tokens short of the sum the engine refuses.
_CONTEXT = r"maximum context length is (?P<m>\d+) tokens"
_OVERFLOWS = (
    # vLLM up to 0.10 (vllm/entrypoints/openai/serving_engine.py, OpenAIServing._validate_input).
    (re.compile(_CONTEXT + r"\. However, you requested \d+ tokens \((?P<p>\d+) in the messages"), 0),
    # vLLM 0.11 (serving_engine.py): "'max_tokens' ... is too large: C. This model's maximum ...".
    (re.compile(_CONTEXT + r" and your request has (?P<p>\d+) input tokens"), 0),
    # vLLM since (vllm/renderers/params.py).
    (re.compile(_CONTEXT + r"\. However, you requested \d+ output tokens and your prompt contains (?P<p>\d+)"), 0),
    # SGLang (tokenizer_manager.py, _validate_one_request): refused when the sum reaches the context.
    (re.compile(r"maximum context length of (?P<m>\d+) tokens\. You requested a total of \d+ tokens: (?P<p>\d+)"), 1),
)


def room_left(message: str) -> int | None:
    """The most completion tokens an engine's context-overflow refusal leaves room for, or None if
    `message` is not one (a prompt that alone fills the context leaves 0)."""
    for pattern, margin in _OVERFLOWS:
        if match := pattern.search(message):
            return max(int(match["m"]) - int(match["p"]) - margin, 0)
    return None
