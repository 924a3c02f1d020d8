"""The package layout is the architecture: the training core never reaches the search side or its libraries."""
import ast
import subprocess
import sys
from pathlib import Path

import esam

ROOT = Path(esam.__file__).resolve().parent
CORE = ("config.py", "errors.py", "optim", "models", "data", "training")
SEARCH_LIBRARIES = ("ray", "optuna", "mlflow")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_core_imports_neither_the_search_side_nor_the_tools():
    for part in CORE:
        for path in [ROOT / part] if part.endswith(".py") else sorted((ROOT / part).rglob("*.py")):
            bad = {n for n in _imports(path) if n.startswith(("esam.search", "esam.perf", "esam.cli"))
                   or n.split(".")[0] in SEARCH_LIBRARIES}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_core_in_a_fresh_interpreter_loads_no_search_library():
    code = ("import sys, esam, esam.config, esam.optim, esam.models, esam.data, esam.training.trainer, "
            "esam.training.cuda_graphs, esam.training.compiling, esam.training.speed_probe; "
            "from esam import train; "
            f"print(sorted(m for m in {SEARCH_LIBRARIES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_function_train_is_not_shadowed_by_a_module():
    code = ("import esam.training.trainer, esam.search.trials.trial\n"  # import what used to shadow esam.train
            "from esam import train\n"
            "from esam.config import train_config_from_dict\n"
            "cfg = train_config_from_dict({'epochs': 1, 'probe_steps': 0, 'optimizer': {'name': 'sgd'},\n"
            "    'data': {'name': 'synthetic', 'synthetic_size': 64, 'synthetic_shape': [1, 8, 8]}, 'batch_size': 32})\n"
            "import esam; assert esam.train is train and callable(train)\n"
            "print(train(cfg)['epoch'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr[-2000:]


def test_the_readme_layout_names_every_module():
    readme = (ROOT.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__init__.py":
            continue  # a package is named by its folder
        assert path.name in layout, f"README's layout section does not name {path.relative_to(ROOT)}"


def test_the_failure_table_names_tests_that_exist():
    import re
    readme = (ROOT.parent / "README.md").read_text()
    section = readme[readme.index("## Failures a search survives"):readme.index("## How throughput is measured")]
    named = {m.split("[")[0] for m in re.findall(r"`(test_[a-z0-9_]+(?:\[[^\]]*\])?)`", section)}
    defined = set()
    for path in (ROOT.parent / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(), re.M))
    assert len(named) >= 15 and named <= defined, sorted(named - defined)


LIBRARIES = ("ray", "optuna", "mlflow")


def _own_private_names() -> set[str]:
    """Every `_name` esam defines itself (functions, classes, attributes it assigns, module globals)."""
    names = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                names.add(node.value)  # __getstate__'s key lists, getattr names
    return {n for n in names if n.startswith("_")}


NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}  # public, though they start with "_"


def test_private_names_of_ray_optuna_and_mlflow_are_used_in_compat_only():
    """The search side (the only code using these libraries) reaches no private name of theirs but in compat.py."""
    own, found = _own_private_names() | NAMEDTUPLE_API, []
    for path in sorted([ROOT / "cli.py", *(ROOT / "search").rglob("*.py")]):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private or any(part.startswith("_") for part in node.module.split(".")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {private}")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if node.attr not in own:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not found, "private names of a library outside esam/search/tune/compat.py: " + "; ".join(found)


def _named_in_docs() -> dict[str, set[str]]:
    """{`esam/...py` paths and `esam.x.y` names: the files naming them}, from the README, the
    package's docstrings and comments, the shipped configs and the experiments."""
    import re
    sources = [ROOT.parent / "README.md", *ROOT.rglob("*.py"), *(ROOT.parent / "tune_configs").glob("*.yaml"),
               *(ROOT.parent / "experiments").rglob("*.py"), *(ROOT.parent / "experiments").rglob("*.md")]
    named: dict[str, set[str]] = {}
    for source in sources:
        text = source.read_text()
        for match in re.findall(r"(?<![\w/.-])(esam/[\w/]+\.py|esam(?:\.[A-Za-z_]\w*)+)", text):
            named.setdefault(match.rstrip("."), set()).add(source.name)
    return named


def _string_constants() -> set[str]:
    """Every string literal in the package: names such as MLflow tags (`esam.kind`) live there."""
    found = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def _resolves(name: str) -> bool:
    import importlib
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_docs_name_only_what_exists():
    """Every `esam/...py` path and `esam.x` module or attribute that the README, docstrings, the
    shipped configs and the experiments name exists (a string the package uses, such as the MLflow
    tag `esam.kind`, counts as existing)."""
    constants = _string_constants()
    missing = []
    for name, where in sorted(_named_in_docs().items()):
        if name.endswith(".py"):  # a path, or a file named alone (`esam.py`, the optimizer's module)
            ok = (ROOT.parent / name).is_file() if "/" in name else any(ROOT.rglob(name))
        else:
            ok = name in constants or any(c.startswith(name + ".") for c in constants) or _resolves(name)
        if not ok:
            missing.append(f"{name} (in {', '.join(sorted(where))})")
    assert not missing, missing


# The package's import graph: module -> the esam modules it imports (at the top or inside a function).
def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}

    def known(name: str) -> str | None:  # `esam.optim.OPTIMIZERS` -> esam.optim
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None
    def targets(node, package: str) -> list[str]:  # `from esam import registry` imports esam.registry, not esam
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if not isinstance(node, ast.ImportFrom):
            return []
        base = node.module or ""
        if node.level:  # `from .cost import X` in esam/optim/sam.py: esam.optim.cost
            parent = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = [t for node in ast.walk(ast.parse(path.read_text())) for t in targets(node, package)]
        graph[name] = {known(n) for n in imported if n.split(".")[0] == "esam"} - {None, name}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of `graph` (a list of its nodes, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None
    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _rooms(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The imports between the parts of one folder (its modules and subfolders), inner imports folded in."""
    def room(module: str) -> str | None:
        return module[len(package) + 1:].split(".")[0] if module.startswith(package + ".") else None
    rooms: dict[str, set[str]] = {}
    for module, imported in graph.items():
        if (a := room(module)) is None:
            continue
        rooms.setdefault(a, set()).update(b for m in imported if (b := room(m)) not in (None, a))
    return rooms


def test_no_import_circles_in_the_package():
    assert _circle(_import_graph()) is None, " -> ".join(_circle(_import_graph()))


def test_every_folder_s_parts_import_one_way():
    """In every folder, its modules and subfolders import one another one way only: no arrow climbs back
    up (e.g. a wing of esam/search that imports the runner, which imports that wing)."""
    graph = _import_graph()
    for package in sorted({m for m in graph if (ROOT.parent / m.replace(".", "/") / "__init__.py").is_file()}):
        circle = _circle(_rooms(graph, package))
        assert circle is None, f"{package}: " + " -> ".join(circle)


# What each wing of esam/search may not reach: the stores and the front are read by the runner, the
# recovery and the Tune side, never the other way round.
WING_RULES = {"esam.search.stores": ("esam.search.tune", "esam.search.recovery", "esam.search.runner",
                                     "esam.search.front", "esam.search.records", "esam.search.trials",
                                     "esam.search.browse", "esam.search.api"),
              "esam.search.front": ("esam.search.tune", "esam.search.recovery", "esam.search.runner",
                                    "esam.search.trials", "esam.search.browse", "esam.search.api"),
              "esam.search.records": ("esam.search.tune", "esam.search.recovery", "esam.search.runner",
                                      "esam.search.front", "esam.search.api")}


def test_the_search_wings_import_downwards_only():
    graph, broken = _import_graph(), []
    for wing, forbidden in WING_RULES.items():
        for module, imported in graph.items():
            if module == wing or module.startswith(wing + "."):
                broken += [f"{module} imports {m}" for m in imported if m.startswith(forbidden)]
    assert not broken, broken


def test_no_private_name_crosses_modules():
    """`_name` is a module's own: another module that needs it gets a public name instead."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("esam"):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


# Modules that import parts of esam inside functions on purpose, and why.
DEFERRED_IMPORTS = {
    "esam/__init__.py": "`import esam` loads no torch until an optimizer or train() is asked for",
    "esam/search/__init__.py": "esam.search.run loads Ray, Optuna and MLflow on first use only",
    "esam/cli.py": "each command imports what it runs: `esam --help` answers without torch or Ray",
}


def test_esam_imports_sit_at_the_top_of_their_module():
    """No import inside a function to dodge a circle; the few deferred on purpose are named above."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        where = str(path.relative_to(ROOT.parent))
        if where in DEFERRED_IMPORTS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset > 0:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n == "esam" or n.startswith("esam.") for n in names):
                    found.append(f"{where}:{node.lineno}")
    assert not found, found
