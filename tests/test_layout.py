"""The package's import graph: imports run one way (issue 14), checked from the source's AST.

Every import counts, those inside functions included: a lazy import hides a cycle from the
interpreter, not from a reader.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("weather", "service")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the project's modules it imports}, over every .py file of the packages."""
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from weather.model import backbone` imports the submodule (and runs the
                # package's __init__ first, but what it uses is the submodule).
                submodules = {f"{base}.{alias.name}" for alias in node.names} & set(files)
                targets.update(submodules or {base})
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components with more than one module: the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_known_cycle_and_nothing_in_a_chain() -> None:
    chain = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert strongly_connected(chain) == []
    looped = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(looped) == [{"a", "b", "c"}]


def test_no_module_imports_itself_back_through_others() -> None:
    graph = import_graph()
    # The graph sees real edges (a finder that saw none would pass anything).
    assert "weather.model.layers" in graph["weather.model.convnet"]
    assert "service.runtime" in graph["service.deps"]
    assert strongly_connected(graph) == []


def test_the_library_never_imports_the_service_and_the_service_only_its_api() -> None:
    graph = import_graph()
    back = {m: sorted(t for t in ts if t.startswith("service")) for m, ts in graph.items()}
    assert {m: ts for m, ts in back.items() if m.startswith("weather") and ts} == {}
    # The service uses the library, not its command line or its training internals.
    private = ("weather.cli", "weather.model.train")
    reach = {m: sorted(set(ts) & set(private)) for m, ts in graph.items()}
    assert {m: ts for m, ts in reach.items() if m.startswith("service") and ts} == {}


# The library's layers, bottom up: a module imports only from lower layers or from its own
# subpackage; siblings on one layer (the simulator, the model, the scores) never import each
# other.
LAYERS = {
    "weather.defaults": 0,
    "weather.data": 0,
    "weather.sim": 1,
    "weather.model": 1,
    "weather.scoring": 1,
    "weather.forecast": 2,
    "weather.baselines": 3,
    "weather.evaluation": 4,
    "weather.cli": 5,
    "weather": 5,  # the package's __init__
}


def layer_of(module: str) -> tuple[str, int]:
    """(the layer's package, its rank) of a library module."""
    parts = module.split(".")
    for n in (2, 1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key, LAYERS[key]
    raise KeyError(f"{module}: in no layer; add its package to LAYERS")


def wrong_way(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    found = {}
    for module, targets in graph.items():
        if not module.startswith("weather"):
            continue
        home, rank = layer_of(module)
        bad = [t for t in targets if layer_of(t)[0] != home and layer_of(t)[1] >= rank]
        if bad:
            found[module] = sorted(bad)
    return found


def test_the_layer_check_sees_a_wrong_way_import() -> None:
    assert wrong_way({"weather.data.grid": {"weather.model.task"}}) == {
        "weather.data.grid": ["weather.model.task"]
    }
    assert wrong_way({"weather.sim.initialise": {"weather.model.noise"}}) != {}
    assert wrong_way({"weather.evaluation.run": {"weather.baselines.interface"}}) == {}


def test_library_imports_run_down_the_layers() -> None:
    """data -> (sim, model, scoring) -> forecast -> baselines -> evaluation -> command line."""
    assert wrong_way(import_graph()) == {}


def test_the_tests_mirror_the_package_tree() -> None:
    """Each folder of tests/ is a package folder's namesake (tools: the scripts and benchmarks;
    cli: the command line), and each package folder with code has one."""
    folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and p.name[0] != "_"}
    packages = {p.name for p in (REPO / "weather").iterdir() if (p / "__init__.py").exists()}
    assert folders - {"tools", "cli", "service"} <= packages, folders - packages
    assert packages <= folders, packages - folders
    assert "service" in folders
