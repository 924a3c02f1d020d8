"""Every shipped search config validates and says how to run it."""
from pathlib import Path

import pytest

from esam.search.config import load_search_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "tune_configs").glob("*.yaml"))


def test_the_paper_setups_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "cifar10_resnet18", "cifar100_resnet18", "cifar10_wrn28_10", "cifar100_wrn28_10",
            "cifar10_pyramidnet110", "cifar100_pyramidnet110", "imagenet_resnet50"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_and_opens_with_how_to_run(path):
    cfg = load_search_config(path)
    assert cfg.name == path.stem
    header = path.read_text().splitlines()[:6]
    assert header[0].startswith("#") and any("esam search" in line for line in header)
    assert any("Expect" in line for line in header)


def test_readme_documents_every_config_key():
    import dataclasses

    from esam import config
    from esam.search import config as search_config
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    classes = [config.TrainConfig, config.DataConfig, config.OptimizerConfig, search_config.SearchConfig,
               search_config.ParamSpace, search_config.Objective, search_config.SamplerConfig,
               search_config.Resources, search_config.MlflowConfig]
    missing = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c) if f"| `{f.name}` |" not in readme]
    assert not missing, f"README's configuration reference lacks {missing}"


def test_readme_config_reference_is_generated_from_the_code():
    # Field comments, metric meanings and registered names: `python -m esam.config_docs` rewrites the section.
    from esam import config_docs
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert config_docs.render(readme) == readme
