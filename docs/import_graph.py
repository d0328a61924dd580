"""Draw the import graph of the ``lk_scatterlight`` package as a PNG.

Imports are read with `ast` (nothing is imported), so this works on any
checkout, e.g. an old commit unpacked into a temporary folder::

    python docs/import_graph.py lk_scatterlight docs/_static/import_graph_after.png
    git worktree add /tmp/before ee64ce2
    python docs/import_graph.py /tmp/before/lk_scatterlight docs/_static/import_graph_before.png

Every import inside the package counts, including those inside functions
(a lazy import still ties the two modules together); imports under
``if TYPE_CHECKING:`` do not. The package has three layers: the **core**
(reading, evaluating and applying cubes; blue), the **builder**
(``lk_scatterlight.builder``, making cubes from FFIs; orange) and the
**drivers** (`DRIVERS`: the command line, the demo and the on-demand build,
which run the builder for a user; grey). A module of a subpackage belongs to
the layer of its top-level name: ``geometry.pointing`` and ``simulate.ffi``
to the core, ``builder.publish.cubes`` to the builder, ``cli.build`` to the
drivers. Edges in a cycle and edges from the core into the builder are drawn
in red. Columns go from modules that import
nothing of the package (left) to those that stand on the most layers (right).
The same functions back ``tests/test_layout.py``.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterable
from pathlib import Path

__all__ = ["package_imports", "cycles", "core_to_builder", "layer", "draw", "DRIVERS"]

#: Modules that run the builder for a user; they may import it, inside functions only.
DRIVERS = ("cli", "demo", "ondemand")


def _module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` inside the package folder ``root``."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, top_level: bool) -> Iterable[ast.Import | ast.ImportFrom]:
    """Import statements of ``tree`` outside ``if TYPE_CHECKING:`` blocks.

    With ``top_level``, only those run when the module is imported (not inside
    a function).
    """
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if top_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def package_imports(root: str | Path, top_level: bool = False) -> dict[str, set[str]]:
    """Which modules of the package each module imports.

    Parameters
    ----------
    root : str or Path
        The package folder (the one holding ``__init__.py``).
    top_level : bool, optional
        Only the imports run when the module is imported, not those inside
        functions.

    Returns
    -------
    graph : dict of str to set of str
        Dotted module name to the dotted names of the package modules it
        imports (``from .cube import X`` gives ``pkg.cube``; ``from . import cube``
        gives ``pkg.cube``). Packages appear under their own name.
    """
    root = Path(root)
    files = {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), filename=str(path)), top_level):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
                members: list[str] = []
            else:
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, node.module] if node.module else anchor)
                else:
                    base = node.module or ""
                bases = [base]
                members = [alias.name for alias in node.names]
            for base in bases:
                submodules = [f"{base}.{m}" for m in members if f"{base}.{m}" in files]
                if submodules:
                    targets.update(submodules)
                if base in files and (len(submodules) < len(members) or not members):
                    targets.add(base)
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other (strongly connected, size > 1).

    An import of a module's own parent package (``from . import conf`` in a
    submodule) is left out: Python always imports the parent first, so it
    cannot form a cycle of its own making.
    """
    edges = {n: {t for t in targets if not n.startswith(t + ".")} for n, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is small
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> str:
    """``"builder"``, ``"driver"`` (`DRIVERS`) or ``"core"``: the layer of a dotted module name.

    Decided by the name below the package's, so the modules of a subpackage
    share its layer (``builder.publish.cubes``: builder; ``cli.build``: driver;
    ``geometry.pointing``, ``simulate.ffi``: core).
    """
    parts = name.split(".")
    if len(parts) > 1 and parts[1] == "builder":
        return "builder"
    if len(parts) > 1 and parts[1] in DRIVERS:  # also the modules of the cli package
        return "driver"
    return "core"


def core_to_builder(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(core module, builder module) pairs where the core imports the builder."""
    return sorted(
        (name, target)
        for name, targets in graph.items()
        if layer(name) == "core"
        for target in targets
        if layer(target) == "builder"
    )


def _layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Column of each module: 0 for leaves, else 1 + the deepest import (cycles merged)."""
    group_of = {name: name for name in graph}
    for group in cycles(graph):
        for member in group:
            group_of[member] = group[0]
    depth: dict[str, int] = {}

    def column(group: str, seen: frozenset[str]) -> int:
        if group in depth:
            return depth[group]
        members = [n for n in graph if group_of[n] == group]
        targets = {group_of[t] for n in members for t in graph[n] if t in group_of} - {group}
        targets -= seen
        depth[group] = 1 + max((column(t, seen | {group}) for t in targets), default=-1)
        return depth[group]

    return {name: column(group_of[name], frozenset()) for name in graph}


def draw(graph: dict[str, set[str]], path: str | Path, title: str) -> None:
    """Draw ``graph`` (from `package_imports`) into the PNG file ``path``.

    One row per level: modules that import nothing of the package at the
    bottom, each module above everything it imports (modules in a cycle share
    a level); arrows point from the importing module to the imported one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    level = _layers(graph)
    rows: dict[int, list[str]] = {}
    for name in sorted(graph, key=lambda n: (layer(n), n)):
        rows.setdefault(level[name], []).append(name)
    width = max(len(names) for names in rows.values())
    where = {
        name: ((width - len(names)) / 2 + i, y)
        for y, names in rows.items()
        for i, name in enumerate(names)
    }
    in_cycle = [set(g) for g in cycles(graph)]
    bad = set(core_to_builder(graph))
    colours = {"core": "#cfe2f3", "builder": "#fce5cd", "driver": "#e0e0e0"}
    fig, ax = plt.subplots(figsize=(1.6 * width + 0.6, 0.55 * len(rows) + 1.4))
    for name, targets in graph.items():
        for target in targets:
            if name.startswith(target + "."):
                continue  # a submodule importing its parent package
            red = (name, target) in bad or any(name in g and target in g for g in in_cycle)
            ax.annotate(
                "",
                xy=where[target],
                xytext=where[name],
                arrowprops={
                    "arrowstyle": "-|>",
                    "color": "#cc0000" if red else "#8a8a8a",
                    "lw": 1.6 if red else 0.5,
                    "alpha": 0.95 if red else 0.4,
                    "shrinkA": 7,
                    "shrinkB": 7,
                    "connectionstyle": "arc3,rad=0.12",
                },
                zorder=3 if red else 1,
            )
    for name, (x, y) in where.items():
        ax.text(
            x,
            y,
            name.partition(".")[2] or name,
            ha="center",
            va="center",
            fontsize=7,
            zorder=4,
            bbox={"boxstyle": "round,pad=0.25", "fc": colours[layer(name)], "ec": "#555555"},
        )
    ax.set_xlim(-0.8, width - 0.2)
    ax.set_ylim(-0.7, max(rows) + 0.7)
    ax.set_axis_off()
    ax.legend(
        handles=[
            Patch(fc=colours["core"], ec="#555555", label="core"),
            Patch(fc=colours["builder"], ec="#555555", label="builder"),
            Patch(fc=colours["driver"], ec="#555555", label="driver (cli, demo, ondemand)"),
            Patch(fc="#cc0000", label="cycle or core -> builder"),
        ],
        loc="upper left",
        fontsize=7,
        frameon=False,
    )
    ax.set_title(
        f"{title}: {len(graph)} modules, {len(in_cycle)} import cycle(s), "
        f"{len(bad)} core-to-builder import(s)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python docs/import_graph.py PACKAGE_DIR OUT.png [--title T]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="the package folder, e.g. lk_scatterlight")
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--title", default="lk_scatterlight imports")
    args = parser.parse_args(argv)
    graph = package_imports(args.package)
    draw(graph, args.out, args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
