"""Diagrams come from the tables the machines run, and the committed doc is current."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.core.diagrams import (
    DOC_PATH,
    main,
    mermaid_diagram,
    render_state_machines_doc,
    transition_table,
)
from ibkr_bridge.core.machines import SPECS, CircuitBreaker, ConnectionMachine, MachineSpec

EDGE = re.compile(r"^\s*(\S+) --> (\S+): (.*)$")


def test_committed_doc_is_up_to_date() -> None:
    expected = render_state_machines_doc()
    assert DOC_PATH.exists(), f"{DOC_PATH} is missing; run: python -m ibkr_bridge.diagrams"
    assert DOC_PATH.read_text(encoding="utf-8") == expected, (
        "docs/state-machines.md is out of date; regenerate it with: python -m ibkr_bridge.diagrams"
    )


def test_rendering_is_deterministic() -> None:
    assert render_state_machines_doc() == render_state_machines_doc()


def _edges(spec: MachineSpec) -> dict[tuple[str, str], set[str]]:
    edges: dict[tuple[str, str], set[str]] = {}
    for line in mermaid_diagram(spec).splitlines():
        match = EDGE.match(line)
        if match and match[1] != "[*]":
            labels = {part.strip() for part in match[3].split("|")}
            edges[(match[1], match[2])] = labels
    return edges


def _expected_edges(spec: MachineSpec) -> dict[tuple[str, str], set[str]]:
    expected: dict[tuple[str, str], set[str]] = {}
    for r in spec.rules:
        dest = r.source if r.dest is None else r.dest
        label = r.trigger + (" [internal]" if r.dest is None else "")
        if r.guard_label:
            label += f" [{r.guard_label}]"
        expected.setdefault((r.source.value, dest.value), set()).add(label)
    return expected


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_diagram_has_exactly_the_table_edges(spec: MachineSpec) -> None:
    assert _edges(spec) == _expected_edges(spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_diagram_is_valid_looking_mermaid(spec: MachineSpec) -> None:
    text = mermaid_diagram(spec)
    lines = text.splitlines()
    assert lines[:3] == ["---", f"title: {spec.title}", "---"]
    assert lines[3] == "stateDiagram-v2"
    assert f"  [*] --> {spec.initial.value}" in lines
    for state in spec.states:
        assert f'  state "{state.value}" as {state.value}' in lines
    # No instance state leaks into the docs, and mermaid forbids ':' in edge labels.
    assert "s_active\n" not in text + "\n"
    assert not any(line.endswith(" s_active") for line in lines)
    for line in lines:
        match = EDGE.match(line)
        if match:
            assert ":" not in match[3]
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_table_lists_every_rule(spec: MachineSpec) -> None:
    rows = transition_table(spec).splitlines()[2:]
    assert len(rows) == len(spec.rules)
    for row, rule in zip(rows, spec.rules, strict=True):
        assert row.startswith(f"| `{rule.trigger}` | {rule.source.value} |")


def test_doc_has_a_section_per_machine() -> None:
    doc = render_state_machines_doc()
    assert doc.count("```mermaid") == len(SPECS)
    for spec in SPECS:
        assert f"## {spec.title} (`{spec.name}`)" in doc
    assert "python -m ibkr_bridge.diagrams" in doc
    assert doc.endswith("\n")


@pytest.mark.parametrize(
    ("make", "spec"),
    [(lambda: CircuitBreaker(retry_interval=60.0), SPECS[0]), (ConnectionMachine, SPECS[1])],
    ids=["CircuitBreaker", "ConnectionMachine"],
)
def test_runtime_machines_run_the_documented_tables(
    make: Callable[[], Any], spec: MachineSpec
) -> None:
    machine = make()
    assert machine.SPEC is spec
    runtime = {
        (name, t.source, t.dest)
        for name, event in machine._fsm.events.items()
        for ts in event.transitions.values()
        for t in ts
    }
    table = {
        (r.trigger, r.source.value, None if r.dest is None else r.dest.value) for r in spec.rules
    }
    assert runtime == table


def test_main_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs" / "state-machines.md"
    assert main(["--check", "--output", str(out)]) == 1
    assert "python -m ibkr_bridge.diagrams" in capsys.readouterr().err
    assert main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_state_machines_doc()
    assert main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace("LIVE", "ALIVE"), encoding="utf-8")
    assert main(["--check", "--output", str(out)]) == 1
