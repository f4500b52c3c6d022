"""Every PromQL expression of the Grafana dashboard and the Prometheus rules, ready to evaluate.

For a test that evaluates them against a real Prometheus scraping a real fedagg run:

- :func:`expressions` returns each expression once, with Grafana's variables replaced by values that select every
  fedagg target and suit a short run (``$job`` -> ``.+``, ``$__rate_interval`` -> ``1m``).
- An alert's expression is legitimately empty while its condition is false (it is marked with the pseudo-event
  ``alert_condition``), so :func:`expressions` also gives, for every alert, its *signal*: the expression without
  its threshold comparisons (``x > 0`` -> ``x``), which a run fills once the alert's metrics have data.
- :func:`selectors` returns the bare metric selectors (``name{matchers}``) that the expressions read; each must
  return data once the run has done what :data:`EVENT_SELECTORS` lists for it.

Typical use::

    for expression in promql.expressions():
        if expression.must_return_data(events={"auth_failure"}):
            assert prometheus.query(expression.query), expression
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "fedagg-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "fedagg-rules.yaml"

#: Grafana variables and what they become for evaluation.
VARIABLES = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$job": ".+",
    "${job}": ".+",
    "$namespace": ".*",
    "${namespace}": ".*",
    "$instance": ".+",
    "${instance}": ".+",
}

#: Series that exist only after something happened (fedagg creates a labelled counter at its first increment).
#: Each key names the event; a run that provokes it (e.g. one collaborator with a rogue certificate, a hook
#: command that exits 1) makes every expression reading these metrics return data.
EVENT_SELECTORS = {
    "auth_failure": ("fedagg_auth_failures_total", "unauthenticated"),
    "hook_failure": ("fedagg_hook_failures_total",),
    # Replicas that elect a leader (ha; issue 21) export the leadership series; a single aggregator may not.
    "leader_election": ("fedagg_leader",),
}

_METRIC = re.compile(
    r"\b(?P<name>(?:fedagg|grpc_server|process)_[a-zA-Z0-9_]+|up)\b(?P<matchers>\{[^}]*\})?(?!\s*\()"
)
_SILENCING = re.compile(r"^\s*unless on \([^)]*\)\s*$.*", re.MULTILINE | re.DOTALL)
_COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*-?\d[\d.]*(?:\s*\*\s*\d[\d.]*)*")


@dataclass(frozen=True)
class Expression:
    """One PromQL query and where it comes from."""

    source: str  # "dashboard" or "rules"
    name: str  # the panel title + legend, or the alert name (+ " signal")
    query: str
    events: tuple[str, ...] = ()  # keys of EVENT_SELECTORS this query needs to return data

    def must_return_data(self, events: set[str] | frozenset[str] = frozenset()) -> bool:
        """Whether a run that provoked ``events`` must see this query return data."""
        return set(self.events) <= set(events)


def substitute(expression: str) -> str:
    """Replace Grafana's variables by values that select every fedagg target in a short run."""
    for variable, value in sorted(VARIABLES.items(), key=lambda item: -len(item[0])):
        expression = expression.replace(variable, value)
    return expression


def dashboard_targets(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, raw expression) for every target of every panel, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield panel.get("title", ""), target["expr"]
            yield from walk(panel.get("panels", []))

    dashboard = json.loads(path.read_text())
    targets = list(walk(dashboard["panels"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        definition = variable.get("definition") or ""
        if match := re.fullmatch(r"label_values\((?P<selector>.+),\s*\w+\)", definition.strip()):
            targets.append((f"variable {variable['name']}", match["selector"]))
    return targets


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every rule (alerting and recording) of the rules file."""
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def signal(expression: str) -> str:
    """An alert's expression (as written, over lines) without its threshold comparisons (``x > 0`` -> ``x``) and
    its silencing clause (a line ``unless on (...)`` and what follows, as FedaggAggregatorDown's after a finished
    experiment): the data the alert looks at."""
    return " ".join(_COMPARISON.sub("", _SILENCING.sub("", expression)).split())


def selectors(expression: str) -> list[str]:
    """The metric selectors (name plus matchers) an expression reads, in order, without duplicates."""
    found: list[str] = []
    for match in _METRIC.finditer(substitute(expression)):
        selector = match["name"] + (match["matchers"] or "")
        if selector not in found:
            found.append(selector)
    return found


def _events(query: str) -> tuple[str, ...]:
    return tuple(
        event for event, needles in EVENT_SELECTORS.items() if any(needle in query for needle in needles)
    )


def expressions(dashboard: Path = DASHBOARD, rules_file: Path = RULES) -> list[Expression]:
    """Every dashboard and rule expression (variables substituted), each alert's signal, each bare selector."""
    found: list[Expression] = []
    for title, raw in dashboard_targets(dashboard):
        query = substitute(raw)
        found.append(Expression("dashboard", title, query, _events(query)))
    for rule in rules(rules_file):
        name = rule.get("alert") or rule.get("record")
        query = " ".join(rule["expr"].split())
        found.append(
            Expression(
                "rules", name, query, _events(query) + (("alert_condition",) if "alert" in rule else ())
            )
        )
        if "alert" in rule:
            quiet = signal(rule["expr"])
            found.append(Expression("rules", f"{name} signal", quiet, _events(quiet)))
    seen = {expression.query for expression in found}
    for expression in list(found):
        for selector in selectors(expression.query):
            if selector not in seen:
                seen.add(selector)
                found.append(
                    Expression(expression.source, f"{expression.name} selector", selector, _events(selector))
                )
    return found


if __name__ == "__main__":  # pragma: no cover - a listing for people
    for item in expressions():
        flags = f"  [needs {', '.join(item.events)}]" if item.events else ""
        print(f"{item.source:9} {item.name}: {item.query}{flags}")
