"""The config file: a typed model and a loader that keeps line and column for every error."""

from typing import Any

from shield.config.loader import load_config, parse_config
from shield.config.model import ShieldConfig


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (committed as config/shield.schema.json)."""
    schema = ShieldConfig.model_json_schema(by_alias=True)
    # Sections that also accept a shorthand scalar ("127.0.0.1:8080", a URL, "present").
    shorthands = {
        "Listener": [{"type": "string"}, {"type": "integer"}],
        "AdminListener": [{"type": "string"}, {"type": "integer"}],
        "Upstream": [{"type": "string", "format": "uri"}],
        "ValueMatch": [{"type": "string"}],
    }
    for name, scalars in shorthands.items():
        definition = schema["$defs"][name]
        schema["$defs"][name] = {
            "anyOf": [*scalars, definition],
            "description": definition.get("description", ""),
        }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Shield config"
    return schema


__all__ = ["ShieldConfig", "config_schema", "load_config", "parse_config"]
