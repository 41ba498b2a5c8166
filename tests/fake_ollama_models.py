"""The fake Ollama's models and the rules Ollama applies to them, each after Ollama's source.

Model facts are real GGUF numbers of the library tags, with the kind of chat template the library
gives each (`fake_ollama_templates`). The rules: name resolution
(types/model/name.go), single-sequence architectures (server/sched.go), thinking
(server/routes.go, harmony/harmonyparser.go) and fitting a prompt into the context
(server/prompt.go, llm/llama_server.go).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

# llm/llama_server.go completionPromptForRequest: a prompt too long for the context, shift off.
NO_ROOM = (
    "the prompt is longer than the context length currently available to the model; shorten the prompt, "
    "adjust the context length in settings, or use a model with a longer context length"
)
# server/sched.go load: architectures forced to one sequence whatever OLLAMA_NUM_PARALLEL says.
SINGLE_SEQUENCE = frozenset(
    {"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe", "nemotron_h",
     "nemotron_h_moe", "nemotron_h_omni"}
)  # fmt: skip
# server/routes.go shouldUseHarmony: these families think whatever `think: false` says.
HARMONY = frozenset({"gptoss", "gpt-oss"})
THINK_LEVELS = ("low", "medium", "high")
# /api/show `capabilities` of models whose template takes tools (ollama.com lists "tools" for these).
TOOLS = ("completion", "tools")


@dataclass
class ModelSpec:
    """Static description of one model, with real GGUF architecture numbers."""

    tag: str
    size: int  # bytes on disk
    family: str  # == GGUF architecture ("llama", "qwen2", "gemma2")
    block_count: int
    head_count: int
    head_count_kv: int | list[int]  # a per-layer list for hybrid architectures
    embedding_length: int
    context_length: int
    parameter_size: str  # "8.0B"
    quantization_level: str = "Q4_K_M"
    installed: bool = True
    capabilities: tuple[str, ...] = ("completion",)
    key_length: int | None = None  # attention.key_length/value_length, where head size ≠ width / heads
    template: str = "llama3"  # a key of fake_ollama_templates.TEMPLATES
    renderer: str = ""  # the Modelfile's RENDERER, if any

    @property
    def arch(self) -> str:
        """GGUF architecture name (the family, for these models)."""
        return self.family

    @property
    def digest(self) -> str:
        """Deterministic 64-hex manifest digest (bare hex, as /api/tags and /api/ps show it)."""
        return hashlib.sha256(self.tag.encode()).hexdigest()

    def kv_bytes(self, num_ctx: int) -> int:
        """f16 KV-cache bytes for num_ctx tokens (what /api/ps adds to the weights)."""
        head = self.key_length or self.embedding_length // self.head_count
        kv = self.head_count_kv
        heads = sum(kv) if isinstance(kv, list) else kv * self.block_count
        return 2 * heads * head * num_ctx * 2

    def details(self) -> dict[str, Any]:
        """The `details` object of /api/tags, /api/ps and /api/show."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


KNOWN_MODELS: dict[str, ModelSpec] = {
    s.tag: s
    for s in [
        ModelSpec("llama3.1:8b", 4_920_753_328, "llama", 32, 32, 8, 4096, 131072, "8.0B", capabilities=TOOLS),
        ModelSpec(
            "mistral:7b", 4_113_301_824, "llama", 32, 32, 8, 4096, 32768, "7.2B", template="mistral", capabilities=TOOLS
        ),
        ModelSpec(
            "qwen2.5:7b", 4_683_087_332, "qwen2", 28, 28, 4, 3584, 32768, "7.6B", template="chatml", capabilities=TOOLS
        ),
        ModelSpec("llama3.2:3b", 2_019_393_189, "llama", 28, 24, 8, 3072, 131072, "3.2B"),
        ModelSpec(
            "gemma2:9b", 5_443_152_417, "gemma2", 42, 16, 8, 3584, 8192, "9.2B", key_length=256, template="gemma"
        ),
        ModelSpec("qwen2.5:14b", 8_988_110_976, "qwen2", 48, 40, 8, 5120, 32768, "14.8B", template="chatml"),
        ModelSpec("llama3.1:70b", 42_520_413_916, "llama", 80, 64, 8, 8192, 131072, "70.6B"),
        ModelSpec(
            "qwen3:8b",
            5_225_387_923,
            "qwen3",
            36,
            32,
            8,
            4096,
            40960,
            "8.2B",
            capabilities=("completion", "thinking"),
            key_length=128,
            template="chatml",
        ),
        ModelSpec(
            "gpt-oss:20b",
            13_780_173_839,
            "gptoss",
            24,
            64,
            8,
            2880,
            131072,
            "20.9B",
            "MXFP4",
            capabilities=("completion", "thinking"),
            key_length=64,
            template="harmony",
        ),
        ModelSpec(
            "qwen3-vl:8b",
            6_140_000_000,
            "qwen3vl",
            36,
            32,
            8,
            4096,
            262144,
            "8.8B",
            capabilities=("completion", "vision"),
            key_length=128,
            template="qwen3-vl",
            renderer="qwen3-vl-instruct",
        ),
    ]
}


def parse_name(tag: str) -> tuple[str, str, str, str]:
    """types/model/name.go ParseName: host/namespace/model:tag with Ollama's defaults merged in."""
    rest, name_tag = tag, ""
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, name_tag = rest.rpartition(":")
    parts = rest.split("/")
    host = "/".join(parts[:-2]).split("://")[-1] if len(parts) > 2 else ""
    namespace = parts[-2] if len(parts) > 1 else ""
    return host or "registry.ollama.ai", namespace or "library", parts[-1], name_tag or "latest"


def norm(tag: str) -> str:
    """The key of a name: Ollama matches names part by part, case-insensitively (Name.EqualFold)."""
    return "/".join(parse_name(tag)).lower()


def shortest(tag: str) -> str:
    """Name.DisplayShortest: what /api/tags and /api/ps list (`llama3.1:8b`, `hf.co/u/m:q4`)."""
    host, namespace, model, name_tag = parse_name(tag)
    if host.lower() != "registry.ollama.ai":
        return f"{host}/{namespace}/{model}:{name_tag}"
    return f"{namespace}/{model}:{name_tag}" if namespace.lower() != "library" else f"{model}:{name_tag}"


def thinking_tokens(spec: ModelSpec, think: Any, beh: dict[str, Any]) -> int:
    """Reasoning tokens before the answer (sent as message.thinking, counted in num_predict).

    Thinking models think unless told not to (server/routes.go ChatHandler: think defaults to
    true with the thinking capability); harmony models (gpt-oss) ignore `think: false` and take
    a level (harmony/harmonyparser.go).
    """
    if "thinking" not in spec.capabilities:
        return 0
    if think is False and spec.family not in HARMONY:
        return 0
    scale = {"low": 1, "high": 4}.get(think if isinstance(think, str) else "", 2)
    return int(beh.get("thinking_tokens", 4)) * scale


def fit_prompt(
    messages: list[Any], num_ctx: int, truncate: bool, shift: bool, open_last: bool = False
) -> int | str | dict[str, Any]:
    """Prompt tokens after Ollama fits the messages into num_ctx, or the error it answers.

    truncate (default on): server/prompt.go chatPrompt drops the oldest non-system messages
    until the rest fits, always keeping the last; if that alone is too long,
    llm/llama_server.go completionPromptForRequest cuts it (shift on) or refuses (shift off).
    truncate off: llama-server gets the whole prompt and refuses it when it fills the context
    (llama.cpp tools/server/server-context.cpp: exceed_context_size_error, with both counts).
    """

    # A message costs its words and 4 tokens of turn markers, but an open trailing assistant message
    # only its words: it sits under the generation prompt, which the fake does not count otherwise.
    def size(msgs: list[Any]) -> int:
        return sum(len(str(m.get("content") or "").split()) + (0 if open_last and m is messages[-1] else 4)
                   for m in msgs if isinstance(m, dict))  # fmt: skip

    full = size(messages)
    if not truncate:
        if full < num_ctx:
            return full
        return {"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": full,
                          "n_ctx": num_ctx, "message": f"request ({full} tokens) exceeds the available "
                          f"context size ({num_ctx} tokens), try increasing it"}}  # fmt: skip
    kept = list(messages)
    for i in range(len(messages)):
        system = [m for m in messages[:i] if isinstance(m, dict) and m.get("role") == "system"]
        kept = system + list(messages[i:])
        if size(kept) <= num_ctx or i == len(messages) - 1:
            break
    tokens = size(kept)
    if tokens <= num_ctx - 1:
        return tokens
    if not shift:
        return NO_ROOM
    return num_ctx - max((num_ctx - 4) // 2, 1)  # contextShiftPromptLimit with num_keep 4
