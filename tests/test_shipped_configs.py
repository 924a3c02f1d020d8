"""The shipped search configs (tune_configs/) are found by name from any directory; a path that exists wins."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from esam.cli import main
from esam.errors import ConfigError
from esam.shipped_configs import header_line, resolve, shipped_config, shipped_configs

TUNE_CONFIGS = Path(__file__).resolve().parent.parent / "tune_configs"


def test_every_yaml_in_tune_configs_is_shipped():
    assert not Path("tune_configs").exists()  # the test runs in an empty directory (conftest)
    assert {name: path.resolve() for name, path in shipped_configs().items()} == \
        {p.stem: p.resolve() for p in TUNE_CONFIGS.glob("*.yaml")}


def test_an_installed_package_reads_its_package_data(tmp_path):
    """A wheel holds tune_configs/ as esam/tune_configs/ (pyproject.toml's package-dir), a folder with no
    __init__.py; the editable install and the checkout read the repository's folder instead."""
    package = Path(__file__).resolve().parent.parent / "esam"
    shutil.copytree(package, tmp_path / "site" / "esam", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(TUNE_CONFIGS, tmp_path / "site" / "esam" / "tune_configs")
    code = ("import json; from esam.shipped_configs import shipped_configs; "
            "print(json.dumps(sorted(map(str, shipped_configs().values()))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          check=False, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    expected = sorted(str(tmp_path / "site" / "esam" / "tune_configs" / p.name) for p in TUNE_CONFIGS.glob("*.yaml"))
    assert json.loads(done.stdout) == expected


@pytest.mark.parametrize("argument", ["cifar10_resnet18", "cifar10_resnet18.yaml",
                                      "tune_configs/cifar10_resnet18.yaml"])  # as the files' headers write it
def test_a_shipped_name_resolves_from_another_directory(argument):
    assert Path(resolve(argument)).resolve() == (TUNE_CONFIGS / "cifar10_resnet18.yaml").resolve()


def test_a_path_that_exists_wins_over_a_name(tmp_path):
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")
    assert resolve("quickstart.yaml") == "quickstart.yaml"
    (tmp_path / "quickstart").mkdir()  # a folder named like a config is a path too: the loader refuses it
    assert resolve("quickstart") == "quickstart"
    assert resolve("elsewhere/missing.yaml") == "elsewhere/missing.yaml"  # the loader says it is missing


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as err:
        resolve("cifar10_resnt18")
    assert "shipped: cifar100_pyramidnet110," in str(err.value)
    assert str(err.value).endswith("did you mean 'cifar10_resnet18'?")
    with pytest.raises(ConfigError, match="no config file or shipped config named 'x"):
        shipped_config("x" * 500)  # shown cut short


def test_search_by_name_loads_the_shipped_file(capsys):
    # trials=0 is refused while the config is validated, before Ray or MLflow start: the file was read
    assert main(["search", "cifar10_resnet18", "--set", "trials=0"]) == 2
    assert capsys.readouterr().err.strip() == "esam: error: trials must be >= 1, got 0"
    assert main(["search", "cifar10_resnt18"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("esam: error: no config file or shipped config named 'cifar10_resnt18'") and "\n" not in err
    assert not Path("mlflow.db").exists()


def test_esam_configs_lists_every_file_with_its_first_header_line(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(TUNE_CONFIGS.glob("*.yaml"))
    for path, line in zip(files, lines):
        first = path.read_text().splitlines()[0]
        assert line.split()[0] == path.stem and line.endswith(first.lstrip("# ")), line
        assert header_line(path) == first.lstrip("# ")
    assert lines[len(files)] == "" and lines[len(files) + 1].startswith(f"{len(files)} configs in ")
