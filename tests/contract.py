"""Validation against the published OpenAPI of Livepeer's reference AI runner (tests/contract/)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_PATH = Path(__file__).parent / "contract" / "ai-runner-openapi.yaml"


@cache
def spec() -> dict[str, Any]:
    """The OpenAPI document."""
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


def validate(schema_name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches components/schemas/<schema_name>."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec()["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


def response_schema(path: str, method: str, status: int) -> str:
    """The schema name the contract gives for a route's JSON answer with this status."""
    content = spec()["paths"][path][method]["responses"][str(status)]["content"]["application/json"]
    ref: str = content["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]
