"""The Grafana dashboard in deploy/grafana, and the metric names its PromQL queries read.

``metric_names`` is a small PromQL tokenizer: an identifier is a metric name unless it
is followed by ``(`` (a function or an aggregation), is a keyword or an aggregation
operator, names labels (inside ``{...}``, or the list after ``by``, ``without``, ``on``,
``ignoring``, ``group_left``, ``group_right``), or follows ``offset``. Strings, ranges
(``[5m]``), numbers, durations and Grafana variables (``$__rate_interval``) are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dimsebus.json"

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"})
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$[A-Za-z0-9_]+)
  | (?P<number>[0-9][0-9A-Za-z_.]*|\.[0-9][0-9A-Za-z_.]*)
  | (?P<identifier>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<space>\s+)
  | (?P<symbol>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokens(expr: str) -> list[Token]:
    """``expr`` as tokens, without spaces."""
    found = []
    for match in _TOKEN.finditer(expr):
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append(Token(kind, match.group()))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    names: set[str] = set()
    stream = tokens(expr)
    depth = {"{": 0, "[": 0}
    label_list = False  # inside the parentheses after ``by`` and the like
    for at, token in enumerate(stream):
        following = stream[at + 1] if at + 1 < len(stream) else None
        previous = stream[at - 1] if at else None
        if token.text in ("{", "[") and token.kind == "symbol":
            depth[token.text] += 1
        elif token.text in ("}", "]") and token.kind == "symbol":
            depth["{" if token.text == "}" else "["] -= 1
        elif token.text == ")" and label_list:
            label_list = False
        elif token.kind != "identifier" or depth["{"] or depth["["] or label_list:
            continue
        elif token.text in LABEL_LISTS:
            label_list = following is not None and following.text == "("
        elif following is not None and following.text == "(":
            continue  # a function or an aggregation
        elif not _keyword(token.text, previous):
            names.add(token.text)
    return names


def _keyword(text: str, previous: Token | None) -> bool:
    """An aggregation operator, a keyword, or the duration after ``offset``."""
    return (
        text in AGGREGATIONS
        or text in KEYWORDS
        or (previous is not None and previous.text == "offset")
    )


def histogram_quantile_series(expr: str) -> set[str]:
    """The metric names inside each ``histogram_quantile(...)`` of ``expr``."""
    found: set[str] = set()
    for start in (m.end() for m in re.finditer(r"histogram_quantile\s*\(", expr)):
        depth, end = 1, start
        while depth and end < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        found |= metric_names(expr[start : end - 1])
    return found


def load() -> dict[str, Any]:
    """The dashboard's JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query: panel targets and query variables."""
    found = [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query)
            found.append((f"variable {variable['name']}", _selector_of(text)))
    return found


def _selector_of(variable_query: str) -> str:
    """The PromQL in a query variable: ``label_values(SELECTOR, label)``'s selector, or
    ``query_result(QUERY)``'s query (Grafana's Prometheus variable functions)."""
    if match := re.fullmatch(
        r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", variable_query
    ):
        return match.group(1)
    if match := re.fullmatch(r"\s*query_result\((.*)\)\s*", variable_query):
        return match.group(1)
    return variable_query
