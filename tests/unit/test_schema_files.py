"""The checked-in JSON Schema and AsyncAPI files are what the models say today."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dimsebus.schemas.events import TYPES
from dimsebus.schemas.export import render

JSON_DIR = Path(__file__).resolve().parents[2] / "schemas" / "json"


def test_checked_in_files_match_the_models() -> None:
    # given the files the models render now
    rendered = render()
    # then the checked-in directory holds exactly those files, byte for byte
    on_disk = {path.name: path.read_text() for path in JSON_DIR.iterdir()}
    stale = sorted(
        name for name in rendered.keys() | on_disk.keys() if rendered.get(name) != on_disk.get(name)
    )
    assert not stale, f"run `dimsebus schemas export schemas/json`; stale files: {stale}"


def test_every_type_has_a_schema_named_by_its_dataschema() -> None:
    for event_type in TYPES:
        schema = json.loads((JSON_DIR / f"{event_type}.json").read_text())
        assert schema["$id"] == f"urn:dimsebus:schema:{event_type}:v1"
        assert schema["properties"]["type"]["const"] == event_type


def test_asyncapi_document_references_resolve() -> None:
    document = yaml.safe_load((JSON_DIR / "asyncapi.yaml").read_text())
    assert document["asyncapi"] == "3.0.0"
    for reference in _references(document):
        node = document
        for part in reference.removeprefix("#/").split("/"):
            node = node[part]


def _references(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return []
