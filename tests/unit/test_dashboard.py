"""deploy/grafana/dimsebus.json: a Grafana dashboard over Prometheus, and its PromQL read right.

Whether the metrics its queries name are really exported is checked against the running
services in tests/integration/test_dashboard_metrics.py.
"""

from __future__ import annotations

import pytest

from tests.dashboard import (
    histogram_quantile_series,
    load,
    metric_names,
    panels,
    queries,
    tokens,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("dimsebus_outbox_depth", {"dimsebus_outbox_depth"}),
        (
            "sum by (category) (rate(dimsebus_cstore_responses_total[$__rate_interval]))",
            {"dimsebus_cstore_responses_total"},
        ),
        (
            'histogram_quantile(0.99, sum without (instance, job) (rate(a_bucket{le!="+Inf",'
            ' job=~"node|x"}[5m] offset 1h)))',
            {"a_bucket"},
        ),
        ("sum(rate(a_sum[1m])) / sum(rate(a_count[1m]))", {"a_sum", "a_count"}),
        (
            "a * on (instance) group_left (version) b > bool 0 and c unless d or e",
            {"a", "b", "c", "d", "e"},
        ),
        ('topk(3, count_values by (x) ("v", a)) @ start()', {"a"}),
        ("max_over_time(a[5m:30s]) - 1.5e3 + inf", {"a"}),
        ("increase(ns:metric_total[${interval}]) offset 5m", {"ns:metric_total"}),
        ('sum by (queue) (a{queue="dimsebus.audit", reason=`x { y`})', {"a"}),
    ],
)
def test_metric_names_are_the_selectors_not_functions_labels_or_keywords(
    expr: str, names: set[str]
) -> None:
    assert metric_names(expr) == names


def test_histogram_quantile_series_are_those_inside_it() -> None:
    expr = "histogram_quantile(0.5, sum by (le) (rate(a_bucket[1m]))) / b + c_bucket"
    assert histogram_quantile_series(expr) == {"a_bucket"}


def test_strings_and_variables_are_single_tokens() -> None:
    kinds = [(t.kind, t.text) for t in tokens('a{b="c}d"}[$__range]')]
    assert ("string", '"c}d"') in kinds
    assert ("variable", "$__range") in kinds


def test_the_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable() -> None:
    # given the dashboard file
    dashboard = load()
    # then it is a current Grafana's classic dashboard model (schema 41: Grafana 12)
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "dimsebus"
    assert dashboard["title"]
    # and its data source is a variable over Prometheus data sources, not a fixed uid
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    reference = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == reference, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]
    # and panel ids are unique, and every panel sits on the 24-column grid
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]


def test_the_dashboard_shows_what_issue_23_asks_for() -> None:
    # given every query of the dashboard
    shown = {name for _, expr in queries(load()) for name in metric_names(expr)}
    quantiles = {name for _, expr in queries(load()) for name in histogram_quantile_series(expr)}
    # then the C-STORE rate, the round trip, the outbox, moves, retries and parking are there
    assert {
        "dimsebus_cstore_responses_total",
        "dimsebus_cstore_round_trip_seconds_bucket",
        "dimsebus_outbox_depth",
        "dimsebus_moves_in_progress",
        "dimsebus_retries_total",
        "dimsebus_messages_parked_total",
    } <= shown
    # and quantiles come from histogram buckets
    assert "dimsebus_cstore_round_trip_seconds_bucket" in quantiles
    assert all(name.endswith("_bucket") for name in quantiles)
