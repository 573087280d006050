"""Compose's variable interpolation, as much of it as docker-compose.yml uses (no engine here).

``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` with nested defaults, and ``$$``
(docs.docker.com/reference/compose-file/interpolation); a bare ``$VAR`` is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping


def interpolate(text: str, environment: Mapping[str, str]) -> str:
    """``text`` with its variables replaced as Compose replaces them from ``environment``."""
    out: list[str] = []
    at = 0
    while at < len(text):
        if text.startswith("$$", at):
            out.append("$")
            at += 2
        elif text.startswith("${", at):
            end = _closing(text, at + 2)
            out.append(_expand(text[at + 2 : end], environment))
            at = end + 1
        else:
            out.append(text[at])
            at += 1
    return "".join(out)


def _closing(text: str, start: int) -> int:
    depth = 1
    for index in range(start, len(text)):
        if text.startswith("${", index):
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unclosed ${{ in {text!r}")


def _expand(body: str, environment: Mapping[str, str]) -> str:
    for operator in (":-", "-"):
        name, found, default = body.partition(operator)
        if found and name.isidentifier():
            value = environment.get(name)
            empty = value is None or (operator == ":-" and value == "")
            return interpolate(default, environment) if empty else str(value)
    return environment.get(body, "")
