"""`esam --help` answers at once: the CLI module and its parser load no torch, Ray, Optuna or MLflow."""
import subprocess
import sys

HEAVY = ("torch", "ray", "mlflow", "optuna")


def test_the_cli_and_its_help_load_no_heavy_library():
    code = ("import contextlib, io, sys, esam.cli\n"
            "esam.cli.build_parser()\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "    esam.cli.main(['--help'])\n"
            "assert 'configs' in out.getvalue()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_public_names_still_import():
    import esam
    from esam import ESAM, SAM, Plain, optim
    assert (ESAM, SAM, Plain) == (optim.ESAM, optim.SAM, optim.Plain)
    assert set(esam.__all__) <= set(dir(esam))


def test_the_bench_options_repeat_the_names_they_mirror():
    from esam.config import COMPILE_MODES
    from esam.optim.cost import SHARPNESS
    from esam.perf import bench, bench_options
    assert bench_options.COMPILE_MODES == COMPILE_MODES and bench_options.SHARPNESS == SHARPNESS
    assert bench.__doc__.splitlines()[0] == bench_options.DESCRIPTION
    assert bench.add_arguments is bench_options.add_arguments  # experiments/bench_step.py's entry point
