"""The import graph has no circle, and every import points down the layers (docs/design.md, "Layers").

Bottom to top:

0. tenancy and plumbing: tenants, members, features, keys and their hashing, audit, settings, the task queue;
1. the ledger: prices, usage events, rollups, provider reports (``usage``; never imports ``budgets``);
2. budgets, windows and holds (record usage through the ledger's services, announce what they charged);
3. alerts: evaluation (budget windows, reconciliation) and the alert record (``governance.notify.alerts``);
4. delivery: channels, messages, transports (knows no budget rule);
5. interfaces: the API (money and id formatting), the web UI, the gateway, Celery tasks, commands.

A lower layer tells a higher one what happened through a Django signal (``usage.signals``,
``budgets.signals``, ``post_save`` of an alert), never by importing it. Imports inside
functions count: a lazy import is a circle all the same. The graph is read with ``ast``, so the
test needs no import of the code it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("governance", "budgets", "usage", "gateway")

TENANCY, LEDGER, BUDGETS, ALERTS, DELIVERY, INTERFACE = range(6)
NAMES = ["tenancy", "ledger", "budgets", "alerts", "delivery", "interface"]

# Module name endings that make a module part of the interface layer wherever it lives (``apps``:
# each AppConfig.ready wires its receivers at start-up, so it may name any layer).
INTERFACE_LEAVES = {
    "apis", "lever_apis", "urls", "lever_urls", "serializers", "bodies", "views", "admin", "tasks", "date_range",
    "plain", "apps",
}
# Explicit places, longest prefix wins.
PLACES = {
    "governance": TENANCY,
    "governance.api": INTERFACE,
    "governance.web": INTERFACE,
    "governance.management": INTERFACE,
    "governance.templatetags": INTERFACE,
    "governance.urls": INTERFACE,
    "governance.wsgi": INTERFACE,
    "governance.asgi": INTERFACE,
    "governance.middleware": INTERFACE,
    "governance.health": INTERFACE,
    "governance.handlers": INTERFACE,
    "governance.hot_handler": INTERFACE,
    "governance.notify": DELIVERY,
    "governance.notify.models": ALERTS,
    "governance.notify.alerts": ALERTS,
    "usage": LEDGER,
    "usage.management": INTERFACE,
    "usage.provider.management": INTERFACE,
    "usage.provider.services": ALERTS,
    "budgets": BUDGETS,
    "budgets.alerting": ALERTS,
    "budgets.levers": INTERFACE,
    "budgets.management": INTERFACE,
    "gateway": INTERFACE,
}
# Delivery knows channels and messages, not budget rules, in Python or by import.
NEVER = {"governance.notify": ("budgets",)}
NEVER_EXCEPT = {"governance.notify.apis", "governance.notify.admin", "governance.notify.urls"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # "from governance.notify import services" names a module; "import budgets.models" its package too.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer_of(name: str) -> int:
    if name.rpartition(".")[2] in INTERFACE_LEAVES:
        return INTERFACE
    prefixes = [p for p in PLACES if name == p or name.startswith(p + ".")]
    return PLACES[max(prefixes, key=len)]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_is_read():
    edges = graph()
    # The check would pass vacuously on an empty graph.
    assert "budgets.services" in edges["budgets.apis"]
    assert "usage.services" in edges["budgets.services"]


def test_no_circles():
    assert circles(graph()) == []


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_points_down():
    wrong = [
        f"{a} ({NAMES[layer_of(a)]}) imports {b} ({NAMES[layer_of(b)]})"
        for a, targets in sorted(graph().items())
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]
    assert wrong == []


def test_delivery_knows_no_budget_rule():
    wrong = [
        f"{a} imports {b}"
        for a, targets in sorted(graph().items())
        for prefix, banned in NEVER.items()
        if a.startswith(prefix + ".") and a not in NEVER_EXCEPT
        for b in sorted(targets)
        if any(b == p or b.startswith(p + ".") for p in banned)
    ]
    assert wrong == []


def test_relative_and_lazy_imports_count(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b\n")
    (package / "b.py").write_text("from pkg.a import f\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    assert imports("pkg.a", package / "a.py", known) == {"pkg", "pkg.b"}
    assert imports("pkg.b", package / "b.py", known) == {"pkg.a"}
