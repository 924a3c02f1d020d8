"""`esam train | search | pareto | export | ls | configs | bench`: the command line.

User mistakes (EsamError) end in one line on stderr and exit status 2, never a traceback.
Importing this module loads no torch, Ray, Optuna or MLflow (each takes seconds): every command
imports what it needs when it runs, so `esam --help` and a mistyped command answer at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from esam.errors import ConfigError, EsamError, first_line

DEFAULT_SEARCH = "quickstart.yaml"


def default_search_config() -> Path:
    """tune_configs/quickstart.yaml, found from a checkout or from the installed package."""
    from esam.shipped_configs import shipped_config
    return shipped_config(DEFAULT_SEARCH)


def search_by_name(args) -> int:
    """`esam search NAME` runs a shipped config from any directory; a path that exists wins over a name."""
    from esam.shipped_configs import resolve
    if args.config:
        args.config = resolve(args.config)
    return cmd_search(args)


def _speed(m: dict) -> str:
    """The run-level speed vs SGD with its 95% interval, e.g. `0.482 [0.470, 0.495]`."""
    return f"{m['speed_vs_sgd']:.3f} [{m['speed_vs_sgd_low']:.3f}, {m['speed_vs_sgd_high']:.3f}]"


def _print_epoch(metrics: dict, _saved) -> None:
    # speed/SGD is the run's estimate over every pair so far; the epoch's own figure follows it
    print(f"epoch {metrics['epoch']:>3}  loss {metrics['train_loss']:.4f}  "
          f"test acc {metrics['test_acc']:6.2f}% +-{metrics['test_acc_se']:.2f}  "
          f"{metrics['images_per_s']:9.0f} img/s  speed/SGD {_speed(metrics)} "
          f"({metrics['probe_pairs']} pairs; epoch {metrics['epoch_speed_vs_sgd']:.3f})  "
          f"cost {metrics['relative_cost']:.2f}  {metrics['epoch_time_s']:.1f}s", flush=True)


def cmd_train(args) -> int:
    from esam.config import brief, load_train_config
    from esam.import_paths import is_import_path
    from esam.models import MODELS
    from esam.training.trainer import train

    config = load_train_config(args.config, args.set)
    if config.model not in MODELS and not is_import_path(config.model):  # short: the value may be a file's worth of text
        raise ConfigError(f"model: unknown model {brief(config.model)} (valid: {', '.join(sorted(MODELS))})")
    o = config.optimizer
    print(f"training {config.model} on {config.data.name} with {o.name} "
          f"(rho {o.rho}, beta {o.beta}, gamma {o.gamma}, score {o.score}) for {config.epochs} epochs", flush=True)
    resume = args.checkpoint_dir if args.resume else None
    if args.resume and not (Path(args.checkpoint_dir or "") / "checkpoint.pt").is_file():
        raise ConfigError(f"--resume: no checkpoint.pt in --checkpoint-dir {args.checkpoint_dir!r}")
    final = train(config, _print_epoch, checkpoint_dir=args.checkpoint_dir, resume_from=resume)
    if not final:
        print("nothing to do: the checkpoint has already finished every epoch")
        return 0
    print(f"done: test acc {final['test_acc']:.2f}% +-{final['test_acc_se']:.2f}, "
          f"speed vs SGD {_speed(final)} (95% interval, {final['probe_pairs']} pairs), "
          f"relative cost {final['relative_cost']:.2f}, {final['images_per_s']:.0f} img/s "
          "(this process's raw throughput: it depends on what else runs on the device)")
    return 0


def cmd_search(args) -> int:
    from esam.search.api import run  # the command is esam.search.run and what it prints

    result = run(Path(args.config) if args.config else default_search_config(), overrides=args.set,
                 address=args.address)
    cfg, outcome = result.config, result.outcome
    from esam.search.front.report import front_note
    constraints = cfg.parsed_constraints()
    print(f"\n{front_note(outcome.rows, outcome.front, constraints)}; then the references:")
    print(outcome.table)
    from esam.search.stores import mlflow_store
    print(hypervolume_lines(mlflow_store.open_store(outcome.tracking_uri), outcome.parent_run_id, outcome.rows,
                            cfg.objective_pairs, constraints))
    from esam.search.front.summary import front_summary
    print(f"\n{front_summary(outcome.rows, cfg.objective_pairs)}")
    from esam.search.stores.mlflow_store import without_password
    print(f"\nresults: MLflow run {outcome.parent_run_id} at {without_password(outcome.tracking_uri)}")
    if str(cfg.ray_storage) == str(outcome.directory):
        print(f"         Ray experiments and search state in {outcome.directory}")
    else:
        print(f"         Ray experiments in {cfg.ray_storage}, search state in {outcome.directory}")
    ui = f"esam ui {cfg.name}"
    if outcome.tracking_uri != mlflow_store.tracking_uri(None):  # not the store esam ui reads by default
        ui += f" --tracking-uri {without_password(outcome.tracking_uri)}"
    if cfg.mlflow.experiment != "esam":
        ui += f" --experiment {cfg.mlflow.experiment}"
    print(f"browse:  {ui}   (its runs in MLflow's UI, Model training mode)")
    if outcome.serve_command:
        print(f"         or {outcome.serve_command}   then open {outcome.runs_url}")
    else:
        print(f"         or open {outcome.runs_url}")
    print(f"optuna:  optuna-dashboard {without_password(cfg.optuna_url())}")
    print(f"export:  esam export {cfg.name} --pick knee --out esam_{cfg.name}_knee.yaml")
    print(f"\n{outcome.ended}")  # 0 whenever every trial ended; the failures are counted here
    return 0


def _client(args):
    """A read-only connection: export and pareto never create a store (a mistyped URI is one line)."""
    from esam.search.stores import mlflow_store
    return mlflow_store.open_store(mlflow_store.tracking_uri(args.tracking_uri))


def hypervolume_lines(client, parent: str, rows: list[dict], objectives, constraints) -> str:
    """The front's hypervolume now, and how it grew trial by trial (the series the search logged)."""
    from esam.search.front import rows as front_rows
    from esam.search.front.hypervolume import hypervolume
    from esam.search.records import mlflow_runs
    area, reference = hypervolume(front_rows.candidates(rows, constraints), objectives,
                                  mlflow_runs.series_reference(client, parent, objectives))
    point = ", ".join(f"{m} {v:g}" for m, v in reference.items())
    history = sorted(client.get_metric_history(parent, mlflow_runs.HYPERVOLUME_SERIES), key=lambda m: m.step)
    text = f"hypervolume of the front: {area:.4g} (reference point: {point})"
    if history:
        text += "\nafter each ended trial: " + ", ".join(f"{m.step}: {m.value:.4g}" for m in history)
    return text


def cmd_pareto(args) -> int:
    from esam.search.front import rows as front_rows
    from esam.search.front.report import format_table, front_note, tag_front_and_write_artifacts
    from esam.search.front.summary import front_summary
    from esam.search.records import mlflow_runs

    client = _client(args)
    parent = mlflow_runs.resolve_search(client, args.experiment, args.search)
    search_config = mlflow_runs.search_config_of(client, parent)
    objectives, constraints = mlflow_runs.objectives_of(search_config), front_rows.constraints_of(search_config)
    rows, front, references = tag_front_and_write_artifacts(client, parent, objectives, constraints)
    failed = sum(r["status"] == "FAILED" for r in rows)
    print(f"search run {parent}: {len(rows)} runs ({failed} failed), {len(front)} on the front")
    print(f"{front_note(rows, front, constraints)}; then the references:")
    print(format_table(front, references, objectives))
    print(hypervolume_lines(client, parent, rows, objectives, constraints))
    print(f"\n{front_summary(rows, objectives)}\n")
    print(f"artifacts rewritten under run {parent}: pareto/pareto.{{csv,json,png,html}}, pareto/best_configs.json")
    return 0


def cmd_export(args) -> int:
    from esam.search.front.export import check_output, export_config, noise_note
    from esam.search.front.pareto import check_rule
    from esam.search.records.mlflow_runs import resolve_search

    try:
        check_rule(args.pick)  # before connecting: a typo costs no store round trip
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_output(args.out)
    client = _client(args)
    parent = resolve_search(client, args.experiment, args.search)
    doc = export_config(client, parent, args.pick, args.out)
    o, m = doc["optimizer"], doc["exported"]["metrics"]
    from esam.search.space import shown_fields, used_fields
    shown = shown_fields()
    settings = ", ".join(f"{k} {o[k]:.4g}" if isinstance(o[k], float) else f"{k} {o[k]}"
                         for k in used_fields(o["name"], o.get("sharpness", "sam")) if k in shown)
    print(f"wrote {args.out}: {o['name']} {settings} "
          f"(test acc {m.get('test_acc', float('nan')):.2f}%, speed vs SGD {m.get('speed_vs_sgd', float('nan')):.3f}, "
          f"run {doc['exported']['mlflow_run_id']})")
    note = noise_note(doc)
    if note:
        print(note)
    return 0


def cmd_ls(args) -> int:
    from esam.search.browse.listing import format_table, search_table
    from esam.search.records import mlflow_runs

    client = _client(args)
    missing = mlflow_runs.experiment_hint(client, args.experiment)
    if missing:  # a mistyped --experiment is an error; an experiment without searches is an empty list
        raise ConfigError(f"--experiment {args.experiment!r}: no such experiment at {client.tracking_uri} {missing}")
    rows = search_table(client, args.experiment)
    print(format_table(rows) if rows else f"no search recorded in MLflow experiment {args.experiment!r}")
    return 0


def cmd_configs(args) -> int:
    from esam.shipped_configs import header_line, shipped_configs, shipped_dir

    configs = shipped_configs()
    width = max(map(len, configs), default=0)
    for name, path in configs.items():
        print(f"{name.ljust(width)}  {header_line(path)}")
    print(f"\n{len(configs)} configs in {shipped_dir()}; run one with `esam search NAME`, copy one to change it")
    return 0


def cmd_ui(args) -> int:
    from esam.search.browse.ui import serve
    return serve(args.tracking_uri, args.experiment, args.search, host=args.host, port=args.port,
                 browser=not args.no_browser, optuna=args.optuna)


def _run_bench(args) -> int:
    from esam.perf import bench  # torch: loaded only when the bench runs
    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esam", description="Tune Efficient SAM: accuracy vs throughput.")
    sub = parser.add_subparsers(dest="command", required=True)

    def overrides(p, example):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a config value (repeatable), e.g. --set {example}")

    def store(p):
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
        p.add_argument("--experiment", default="esam", help="MLflow experiment (default: esam)")

    p = sub.add_parser("train", help="train one model from a config (a search's exported config too)")
    p.add_argument("config", nargs="?", help="YAML training config (default: built-in defaults)")
    overrides(p, "optimizer.rho=0.1")
    p.add_argument("--checkpoint-dir", help="write a checkpoint here after each epoch")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("search", help="run or continue a search (default: tune_configs/quickstart.yaml)")
    p.add_argument("config", nargs="?", help="YAML search config, or a shipped config's name (esam configs)")
    overrides(p, "trials=4 or --set train.optimizer.lr=0.1 (training fields sit under train.)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=search_by_name)

    p = sub.add_parser("pareto", help="print a search's Pareto front and rewrite its artifacts")
    p.add_argument("search", nargs="?", help="search name or parent run id (default: the newest search)")
    store(p)
    p.set_defaults(func=cmd_pareto)

    from esam.perf import bench_options  # bench.py's options without bench.py's torch
    p = sub.add_parser("bench", help="time SGD, SAM and ESAM steps interleaved (esam bench --quick: a CPU smoke run)",
                       description=bench_options.DESCRIPTION)
    bench_options.add_arguments(p)
    p.set_defaults(func=_run_bench)

    p = sub.add_parser("export", help="write one front point as a runnable config (ESAM or the method the search found)")
    p.add_argument("search", nargs="?", help="search name or parent run id (default: the newest search)")
    p.add_argument("--pick", default="knee",
                   help="max-accuracy | max-throughput | knee | fastest-within=D (D: accuracy points)")
    p.add_argument("--out", required=True, help="output YAML file")
    store(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ls", help="list the searches in an MLflow store: trials, front, hypervolume, state, plot")
    store(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("configs", help="list the shipped search configs (esam search NAME runs one)")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("ui", help="serve a search's MLflow store and open its runs in MLflow's Model training mode")
    p.add_argument("search", nargs="?", help="search name or parent run id (default: the newest search)")
    store(p)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port to serve on (default: 5000; 0: any free port)")
    p.add_argument("--no-browser", action="store_true", help="print the page to open, do not open a browser")
    p.add_argument("--optuna", action="store_true", help="also serve optuna-dashboard (when installed) on the next port")
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    from esam.search.stores.mlflow_store import client_settings  # light: no MLflow until a command opens a store
    try:
        with client_settings():
            return args.func(args)
    except EsamError as err:
        print(f"esam: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # SearchStopped carries the signal: 130 for SIGINT, 143 for SIGTERM
        print(f"esam: stopped ({err})" if str(err) else "esam: interrupted", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except Exception as err:  # noqa: BLE001 - a bug, or a library that changed: one line, the traceback in a file
        if os.environ.get("ESAM_TRACEBACK"):
            raise
        print(f"esam: error: unexpected {type(err).__name__}: {first_line(err)}"
              f"; the traceback is in {_crash_log()} (ESAM_TRACEBACK=1 prints it here)", file=sys.stderr)
        return 1


def _crash_log() -> str:
    """Write the current exception's traceback to a file in the temp directory; its path."""
    import tempfile
    import traceback
    fd, path = tempfile.mkstemp(prefix="esam-crash-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        traceback.print_exc(file=f)
    return path


if __name__ == "__main__":
    sys.exit(main())
