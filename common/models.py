"""Model ids: Hugging Face ids that go-livepeer advertises, mapped to the Ollama tags that run them."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError

# Well-known instruct models and their default (Q4_K_M) Ollama tags.
WELL_KNOWN_TAGS: dict[str, str] = {
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama3.1:8b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama3.1:8b",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "llama3.1:70b",
    "meta-llama/Llama-3.2-1B-Instruct": "llama3.2:1b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama3.2:3b",
    "meta-llama/Llama-3.3-70B-Instruct": "llama3.3:70b",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistral:7b",
    "mistralai/Mistral-Nemo-Instruct-2407": "mistral-nemo:12b",
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen2.5:0.5b",
    "Qwen/Qwen2.5-1.5B-Instruct": "qwen2.5:1.5b",
    "Qwen/Qwen2.5-3B-Instruct": "qwen2.5:3b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5:7b",
    "Qwen/Qwen2.5-14B-Instruct": "qwen2.5:14b",
    "Qwen/Qwen2.5-32B-Instruct": "qwen2.5:32b",
    "Qwen/Qwen2.5-72B-Instruct": "qwen2.5:72b",
    "Qwen/Qwen2.5-Coder-7B-Instruct": "qwen2.5-coder:7b",
    "google/gemma-2-2b-it": "gemma2:2b",
    "google/gemma-2-9b-it": "gemma2:9b",
    "google/gemma-2-27b-it": "gemma2:27b",
    "microsoft/Phi-3-mini-4k-instruct": "phi3:mini",
}

DEFAULT_MODELS = "meta-llama/Meta-Llama-3.1-8B-Instruct"

# Ollama's name defaults (ollama/ollama types/model/name.go, DefaultName).
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


def ollama_name(tag: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) as Ollama parses a name (types/model/name.go, ParseName)."""
    rest, name_tag = tag.strip(), ""
    # "/" cannot appear in a tag, so a ":" after the last "/" starts the tag (a host's port does not).
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, name_tag = rest.rpartition(":")
    parts = rest.split("/")
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else ""
    host = "/".join(parts[:-2]) if len(parts) >= 3 else ""
    host = host.split("://", 1)[-1]
    return (host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, name_tag or DEFAULT_TAG)


def ollama_name_key(tag: str) -> str:
    """The key two names share when Ollama takes them for the same model.

    Ollama compares names part by part, case-insensitively (types/model/name.go, EqualFold;
    server/routes.go, getExistingName), with `registry.ollama.ai/library/` and `:latest` implied:
    `Llama3.1:8B`, `library/llama3.1:8b` and `registry.ollama.ai/library/llama3.1:8b` are one model.
    """
    host, namespace, model, name_tag = ollama_name(tag)
    return f"{host}/{namespace}/{model}:{name_tag}".lower()


@dataclass(frozen=True)
class ModelSpec:
    """One configured model: the id clients ask for and the Ollama tag that serves it."""

    model_id: str
    tag: str


def parse_models(value: str, *, name: str = "MODELS", served_as_id: bool = False) -> tuple[ModelSpec, ...]:
    """Parse `id=tag, id, ...` (an entry without `=` takes its tag from WELL_KNOWN_TAGS).

    With `served_as_id` (an OpenAI-compatible engine, which vLLM and SGLang serve under the Hugging
    Face id by default), an entry without `=` is served under its own id.
    """
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        model_id, sep, tag = (part.strip() for part in entry.partition("="))
        if not sep and served_as_id:
            tag = model_id
        elif not sep:
            if model_id not in WELL_KNOWN_TAGS:
                raise ConfigError(
                    f"{name}: {model_id!r} is not a well-known model; give its Ollama tag as '{model_id}=<ollama tag>'"
                )
            tag = WELL_KNOWN_TAGS[model_id]
        if not model_id or not tag:
            raise ConfigError(f"{name}: entry {entry!r} must look like 'model_id=ollama_tag'")
        if model_id in seen:
            raise ConfigError(f"{name}: {model_id!r} is listed twice")
        seen.add(model_id)
        specs.append(ModelSpec(model_id, tag))
    if not specs:
        raise ConfigError(f"{name}: at least one model is required")
    return tuple(specs)
