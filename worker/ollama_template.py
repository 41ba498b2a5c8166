"""Whether Ollama continues a trailing assistant message for a model, read from its `/api/show`.

Ollama has no "continue" flag: a continuation sends the answer so far as the last (assistant)
message, and whether the model goes on from it depends on how Ollama renders the prompt:

- A Go template that uses `.Messages` is rendered whole (ollama/ollama template/template.go,
  `Execute`); the library's templates guard the end of an assistant turn with the message's
  position (`{{ if not $last }}<|eot_id|>{{ end }}` in llama3.1/3.2, qwen2.5, qwen3, gemma2,
  gemma3), so the last assistant turn stays open and the model continues it. Templates without
  that guard close every turn and then open a new assistant turn (Ollama's fallback
  template/llama3-instruct.gotmpl, template/chatml.gotmpl, template/gemma3-instruct.gotmpl):
  the model starts a new answer.
- A legacy `.Prompt`/`.Response` template (no `.Messages`): `Execute` renders the last exchange
  with the template cut right after `{{ .Response }}` (and `Parse` appends `{{ .Response }}` to a
  template that has neither), so the answer so far is left open.
- A Jinja template is what `/api/show` reports for a model Ollama runs in its native chat mode
  (server/routes.go `selectedModelTemplate`, `chatModeForModel`): llama-server renders the
  messages (llm/llama_server.go `Chat`, POST /v1/chat/completions) and, by default, prefills a
  trailing assistant message (llama.cpp tools/server `prefill_assistant`, which Ollama leaves on).
- A Go renderer named in the Modelfile (`RENDERER`, server/images.go): model/renderers decide;
  those listed in PREFILL_RENDERERS leave a trailing assistant message open (`prefill`), the
  others are not known to.
- gpt-oss (harmony, which thinks whatever `think` says): not continued; its reasoning channel
  would start again before the answer.
"""

from __future__ import annotations

import re
from typing import Any

from worker.ollama_wire import ALWAYS_THINKING_FAMILIES

# model/renderers: `prefill := lastMessage && message.Role == "assistant"` skips the end of turn and
# the new generation prompt (lfm2.go, olmo3.go, qwen35.go, qwen3coder.go, qwen3vl.go; cohere.go).
PREFILL_RENDERERS = frozenset({"lfm2", "lfm2-thinking", "olmo3", "olmo3.1", "qwen3.5", "qwen3-coder",
                               "qwen3-vl-instruct", "qwen3-vl-thinking", "cohere"})  # fmt: skip
_MESSAGES = re.compile(r"\.Messages\b")
# The guard library templates put on an assistant turn's end token: not for the last message.
_LAST_GUARD = re.compile(r"\{\{-?\s*if\s+not\s+(\$last|\(eq\s+\(len\s+\(slice\s+\$\.Messages\s+\$\w+\)\)\s+1\))")
_DIRECTIVE = re.compile(r"^(RENDERER|PARSER)\s+(\S+)", re.MULTILINE | re.IGNORECASE)


def continuation(shown: dict[str, Any]) -> tuple[bool, str]:
    """(whether a trailing assistant message is continued, why) for a model's `/api/show` answer."""
    details = shown.get("details") if isinstance(shown.get("details"), dict) else {}
    family = str((details or {}).get("family") or "")
    template = shown.get("template") if isinstance(shown.get("template"), str) else ""
    directives = {k.upper(): v for k, v in _DIRECTIVE.findall(str(shown.get("modelfile") or ""))}
    if family.lower() in ALWAYS_THINKING_FAMILIES:
        return False, f"{family} always reasons first (harmony): a continuation would start its reasoning again"
    if renderer := directives.get("RENDERER"):
        if renderer in PREFILL_RENDERERS:
            return True, f"Ollama's {renderer} renderer leaves a trailing assistant message open"
        return False, f"Ollama's {renderer} renderer is not known to leave a trailing assistant message open"
    if not template:
        return False, "Ollama reported no template for it"
    if "{%" in template:
        return True, "a Jinja chat template: llama-server renders it and continues a trailing assistant message"
    if not _MESSAGES.search(template):
        return True, "a .Prompt/.Response template: Ollama cuts it right after the answer so far"
    if _LAST_GUARD.search(template):
        return True, "its template leaves the last assistant turn open"
    return (
        False,
        "its template closes every assistant turn and opens a new one: a continuation would restart the answer",
    )
