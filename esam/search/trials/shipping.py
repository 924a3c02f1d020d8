"""The user's code on every Ray node: the project directory shipped as the job's `working_dir`.

A search run from the user's project directory that names code there (`train.model:
my_project.nets:build`, or a builder registered in this process whose module lives there) gives
Ray a job-level runtime env, `ray.init(runtime_env={"working_dir": <that directory>, "excludes":
[...]})`: Ray zips the directory once, keeps it in the cluster's GCS, and every node unpacks it and
puts it on its workers' `sys.path`, so `my_project` imports in every trial though no node has it
installed or on disk. Code that lives elsewhere (an installed package) is not shipped: install it
on every node. Ray refuses a package of 512 MiB or more (its gRPC message limit; it warns from half
that), which the excludes below, the directory's `.gitignore` and a `.rayignore` keep far off.

Why `working_dir` and not `py_modules`: a project's package imports what lies beside it (a helper
module, a file it reads), which a working directory carries and a list of packages would not; and
with a working directory Ray stops adding the driver's current directory to the workers' sys.path,
so every trial imports the shipped copy, never a same-named path that exists only on some nodes.
Trials still run in their own trial directory (Tune's default), with the copy on their sys.path.

Beside compat.keep_credentials_out_of_trial_envs: that trims the `env_vars` Tune gives each trial
actor; Ray merges an actor's runtime env with the job's key by key, so the actors keep the working_dir.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from esam import import_paths
from esam.search.stores.mlflow_store import tracking_uri
from esam.search.trials.user_code import trained_methods, users_modules

# Never shipped, wherever they are in the directory (gitignore syntax, as Ray reads `excludes`):
# version control, virtual environments, caches, and esam's default stores and data folder.
LEFT_OUT = (".git/", "__pycache__/", "*.pyc", ".ipynb_checkpoints/", "/.venv/", "/venv/", "/data/",
            "/esam_results/", "/mlruns/", "/mlartifacts/", "/mlflow.db*", "/.esam_cache/")


def _under(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _ships(module: str, project: Path) -> bool:
    """True when `module`'s code lives in `project` (a script's or a notebook's `__main__` counts: its helpers sit beside it)."""
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        return main_file is None or _under(Path(main_file).resolve(), project)
    found = import_paths.module_file(module)
    return found is not None and _under(found, project)


def _inside(value: str | None, project: Path) -> str | None:
    """`value` (a path, maybe relative to the working directory) as an anchored pattern when it lies in `project`."""
    if not value or "://" in value:
        return None
    path = Path(value).expanduser().resolve()
    if not _under(path, project) or path == project:
        return None
    return "/" + path.relative_to(project).as_posix()  # no trailing slash: a file or a folder


def excludes(cfg, project: Path) -> list[str]:
    """What the working directory leaves out: LEFT_OUT, and the search's own stores, data and environment inside it."""
    uri = tracking_uri(cfg.mlflow.tracking_uri)
    sqlite = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    optuna = cfg.optuna_url()
    optuna_file = optuna[len("sqlite:///"):] if optuna.startswith("sqlite:///") else None
    own = [_inside(p, project) for p in (cfg.results_dir, cfg.state_dir, cfg.train.data.root, sqlite, optuna_file,
                                          sys.prefix)]
    return list(dict.fromkeys([*LEFT_OUT, *(p for p in own if p)]))


def runtime_env(cfg, modules: list[str], project: Path | None = None) -> dict | None:
    """The job's runtime env that ships `project` (default: the working directory) when one of `modules`
    lives there; None when nothing needs shipping."""
    project = Path(project or os.getcwd()).resolve()
    if not any(_ships(m, project) for m in modules):
        return None
    return {"working_dir": str(project), "excludes": excludes(cfg, project)}


def project_env(cfg, echo: Callable[[str], None]) -> dict | None:
    """The runtime env for `cfg`'s search (esam.search.trials.user_code names the modules), said in one line."""
    modules = users_modules(cfg.train, trained_methods(cfg))
    env = runtime_env(cfg, modules)
    if env:
        echo(f"search {cfg.name}: shipping {env['working_dir']} to every Ray worker (runtime_env working_dir; "
             f"left out: .gitignore, .rayignore and {len(env['excludes'])} patterns) for "
             f"{', '.join(dict.fromkeys(modules))}")
    return env
