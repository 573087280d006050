"""The contract as files: one JSON Schema per event type, and an AsyncAPI 3.0 document.

``render()`` is pure: it returns file name -> text, so a test can compare the
checked-in ``schemas/json/`` with what the models say today.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from dimsebus.schemas.envelope import CONTENT_TYPE, CloudEvent, schema_uri
from dimsebus.schemas.events import COMMAND_MODELS, EVENT_MODELS, TYPES
from dimsebus.schemas.examples import every_event, sequential_ids

EXCHANGE, LOG, DLX, COMMANDS = (
    "dimsebus.events",
    "dimsebus.log",
    "dimsebus.dlx",
    "dimsebus.commands",
)
_AMQP_BINDING_VERSION = "0.3.0"


def event_schema(model: type[CloudEvent]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event type, ``$id`` = its ``dataschema``."""
    event_type = model.model_fields["type"].default
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_uri(event_type),
        **model.model_json_schema(mode="validation"),
    }


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the exchanges, the log stream and every message."""
    models = (*EVENT_MODELS, *COMMAND_MODELS)
    _, defs = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    examples = _examples()
    messages = {model.__name__: _message(model, examples) for model in models}
    event_refs = {
        model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}
        for model in EVENT_MODELS
    }
    command_refs = {
        m.__name__: {"$ref": f"#/components/messages/{m.__name__}"} for m in COMMAND_MODELS
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "dimsebus",
            "version": "1.0.0",
            "description": "Every C-STORE-RSP a DICOM node receives, as a CloudEvent on RabbitMQ.",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "rabbitmq": {"host": "localhost:5672", "protocol": "amqp", "protocolVersion": "0.9.1"}
        },
        "channels": {
            "events": _exchange_channel(
                EXCHANGE, "Every event; routing key = type[.category].", event_refs
            ),
            "log": _stream_channel(event_refs),
            "commands": _exchange_channel(
                COMMANDS, "Commands to nodes, routed by node id.", command_refs
            ),
        },
        "operations": {
            "publishEvent": _operation(
                "send", "events", "A service publishes an event.", event_refs
            ),
            "readLog": _operation("receive", "log", "Replay the log from any offset.", event_refs),
            "sendCommand": _operation("send", "commands", "Ask a node to act.", command_refs),
        },
        "components": {"messages": messages, "schemas": defs["$defs"]},
    }


def render() -> dict[str, str]:
    """Every generated file's name and text."""
    files = {
        f"{event_type}.json": json.dumps(event_schema(model), indent=2, sort_keys=True) + "\n"
        for event_type, model in TYPES.items()
    }
    files["asyncapi.yaml"] = yaml.dump(
        asyncapi(), Dumper=_NoAliases, sort_keys=False, allow_unicode=True
    )
    return files


class _NoAliases(yaml.SafeDumper):
    """Writes shared sub-trees out in full: readers of the document need no YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _examples() -> dict[str, dict[str, Any]]:
    story = every_event(
        node_id="node-1", start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), ids=sequential_ids()
    )
    examples: dict[str, dict[str, Any]] = {}
    for event in story:
        examples.setdefault(event.type, json.loads(event.model_dump_json()))
    return examples


def _message(model: type[CloudEvent], examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    event_type = model.model_fields["type"].default
    return {
        "name": event_type,
        "title": model.__name__,
        "summary": (model.__doc__ or "").strip(),
        "contentType": CONTENT_TYPE,
        "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        "examples": [{"name": "example", "payload": examples[event_type]}],
        "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": _AMQP_BINDING_VERSION}},
    }


def _exchange_channel(name: str, description: str, refs: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": name,
        "description": description,
        "messages": refs,
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": name,
                    "type": "topic",
                    "durable": True,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": _AMQP_BINDING_VERSION,
            }
        },
    }


def _stream_channel(refs: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": LOG,
        "description": f"The replayable event log: a stream queue bound to {EXCHANGE} with '#'.",
        "messages": refs,
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {
                    "name": LOG,
                    "durable": True,
                    "exclusive": False,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": _AMQP_BINDING_VERSION,
            }
        },
    }


def _operation(action: str, channel: str, summary: str, refs: dict[str, Any]) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in refs],
    }
