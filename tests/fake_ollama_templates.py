"""The fake Ollama's chat templates: the text `/api/show` reports, and how Ollama renders the messages.

What matters to the runner is whether a trailing assistant message stays open in the rendered
prompt (the model then continues it) or is closed and followed by a new assistant turn (the model
starts a new answer). Each template below keeps that structure of the real one it is named after
(tools and rarely used branches left out), with a Python rendering that does what Ollama does:

- `.Messages` templates are executed over all messages (ollama/ollama template/template.go,
  `Execute`). The library's llama3.1/3.2, qwen2.5/qwen3 and gemma2/gemma3 templates end an
  assistant turn only `{{ if not $last }}` (as `ollama show --template` prints them; recorded in
  huggingface.js packages/ollama-utils/src/chat-template-automap.ts). Ollama's fallback templates
  for imported models close every turn: template/gemma3-instruct.gotmpl.
- A `.Prompt`/`.Response` template (the library's mistral:7b): `Parse` appends `{{ .Response }}`
  when the template names neither (template.go `Parse`); `Execute` renders earlier exchanges
  whole and the last one with the template cut right after `{{ .Response }}`.
- A model with a Go renderer (qwen3-vl: `RENDERER qwen3-vl-instruct` in its Modelfile) is
  rendered by it (server/prompt.go `renderPrompt`); model/renderers/qwen3vl.go leaves a trailing
  assistant message open (`prefill`). Its template is Ollama's default, `{{ .Prompt }}`.
- gpt-oss (harmony): a new assistant message always starts with its reasoning channel, so the
  fake renders a trailing assistant message closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Template:
    """A template's text as /api/show reports it, and Ollama's rendering of a conversation with it."""

    text: str
    render: Callable[[Messages], str]


def _content(m: dict[str, Any]) -> str:
    return str(m.get("content") or "")


def _turns(msgs: Messages, start: Callable[[str], str], end: str, generation: str) -> str:
    """A `.Messages` template whose assistant turn ends `{{ if not $last }}`: the last one stays open."""
    out = ""
    for i, m in enumerate(msgs):
        last, role = i == len(msgs) - 1, str(m.get("role"))
        out += start(role) + _content(m)
        if role != "assistant" or not last:
            out += end
        if last and role != "assistant":
            out += generation
    return out


def _closed_turns(msgs: Messages, start: Callable[[str], str], end: str, generation: str) -> str:
    """A template that ends every turn and then opens the model's turn."""
    return "".join(start(str(m.get("role"))) + _content(m) + end for m in msgs) + generation


def _legacy(msgs: Messages, exchange: Callable[[str, str, str], str]) -> str:
    """template.go Execute for `.Prompt`/`.Response`: exchanges whole, the last cut after its response."""
    out, system, prompt, response = "", "", "", ""
    for m in msgs:
        role, text = m.get("role"), _content(m)
        if role == "system":
            if prompt or response:
                out, prompt, response = out + exchange(system, prompt, response), "", ""
            system = text
        elif role == "user":
            if response:
                out, system, prompt, response = out + exchange(system, prompt, response), "", "", ""
            prompt = text
        elif role == "assistant":
            response = text
    return out + exchange(system, prompt, response)


LLAMA3 = Template(
    '{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n'
    '{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
    '{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n'
    '{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>\n\n'
    "{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}\n{{- end }}\n{{- end }}",
    lambda msgs: _turns(msgs, lambda r: f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>",
                        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
)  # fmt: skip
CHATML = Template(
    '{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n'
    '{{- if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}\n'
    '{{- end }}\n{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant\n{{ end }}\n{{- end }}',
    lambda msgs: _turns(msgs, lambda r: f"<|im_start|>{r}\n", "<|im_end|>\n", "<|im_start|>assistant\n"),
)  # fmt: skip
GEMMA = Template(
    '{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n'
    '{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n'
    "{{ if $last }}<start_of_turn>model\n{{ end }}\n"
    '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}{{ if not $last }}<end_of_turn>\n'
    "{{ end }}\n{{- end }}\n{{- end }}",
    lambda msgs: _turns(msgs, lambda r: "<start_of_turn>" + ("model" if r == "assistant" else "user") + "\n",
                        "<end_of_turn>\n", "<start_of_turn>model\n"),
)  # fmt: skip
GEMMA3_FALLBACK = Template(
    "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    '{{- if eq .Role "user" }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n'
    '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}\n'
    "{{- if $last }}<start_of_turn>model\n{{ end }}\n{{- end }}",
    lambda msgs: _closed_turns(msgs, lambda r: "<start_of_turn>" + ("model" if r == "assistant" else "user") + "\n",
                               "<end_of_turn>\n", "<start_of_turn>model\n"),
)  # fmt: skip
MISTRAL_LEGACY = Template(
    "[INST] {{ .System }} {{ .Prompt }} [/INST]\n",
    lambda msgs: _legacy(msgs, lambda system, prompt, response: f"[INST] {system} {prompt} [/INST]\n{response}"),
)
HARMONY = Template(
    "<|start|>system<|message|>Reasoning: {{ .ThinkLevel }}<|end|>\n{{- range .Messages }}<|start|>{{ .Role }}"
    "<|message|>{{ .Content }}<|end|>{{- end }}<|start|>assistant",
    lambda msgs: _closed_turns(msgs, lambda r: f"<|start|>{r}<|message|>", "<|end|>", "<|start|>assistant"),
)
QWEN3VL_RENDERER = Template("{{ .Prompt }}", CHATML.render)

TEMPLATES = {"llama3": LLAMA3, "chatml": CHATML, "gemma": GEMMA, "gemma3-instruct": GEMMA3_FALLBACK,
             "mistral": MISTRAL_LEGACY, "harmony": HARMONY, "qwen3-vl": QWEN3VL_RENDERER}  # fmt: skip


def continues(template: str, messages: Messages) -> bool:
    """Whether the rendered prompt ends with the trailing assistant message (the model goes on from it)."""
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        return False
    text = _content(messages[-1])
    return bool(text) and TEMPLATES[template].render(messages).endswith(text)
