import pytest
import yaml

from esam.config import TrainConfig, load_train_config, parse_overrides
from esam.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "epochs: 3\noptimizer: {rho: 0.1}\n")
    cfg = load_train_config(path, ["optimizer.beta=0.5", "data.name=synthetic", "optimizer.max_grad_norm=null"])
    assert cfg.epochs == 3 and cfg.optimizer.rho == 0.1 and cfg.optimizer.beta == 0.5
    assert cfg.data.name == "synthetic" and cfg.optimizer.max_grad_norm is None
    assert cfg.optimizer.gamma == TrainConfig().optimizer.gamma  # untouched defaults stay


def test_ints_accepted_for_floats(tmp_path):
    cfg = load_train_config(write(tmp_path, "optimizer: {lr: 1}\n"))
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)


@pytest.mark.parametrize("text, message", [
    ("epoch: 3\n", "unknown key epoch"),
    ("optimizer: {rhoo: 1}\n", "unknown key optimizer.rhoo"),
    ("epochs: three\n", "epochs must be int"),
    ("optimizer: {beta: 1.5}\n", "optimizer.beta must be in (0, 1]"),
    ("optimizer: {gamma: 0}\n", "optimizer.gamma must be in (0, 1]"),
    ("optimizer: {lr: -0.1}\n", "optimizer.lr must be >= 0"),
    ("optimizer: {rho: -1}\n", "optimizer.rho must be >= 0"),
    ("optimizer: {name: adam}\n", "optimizer.name: unknown optimizer 'adam'"),
    ("batch_size: 0\n", "batch_size must be positive"),
    ("precision: fp16\n", "fp16 needs a GradScaler"),
    ("data: {name: mnist}\n", "data.name: unknown dataset 'mnist'"),
    ("data: 3\n", "data must be a mapping"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_configs_name_the_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_train_config(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_train_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_search_and_exported_files_load_as_training_configs(tmp_path):
    search = write(tmp_path, yaml.safe_dump({"name": "s", "train": {"epochs": 2}, "trials": 3}), "s.yaml")
    assert load_train_config(search).epochs == 2
    exported = write(tmp_path, yaml.safe_dump({"epochs": 4, "exported": {"mlflow_run_id": "abc"}}), "e.yaml")
    assert load_train_config(exported).epochs == 4


def test_augmentation_defaults_follow_the_dataset():
    digits = load_train_config(None).data  # an 8x8 digit survives neither a 16 px Cutout nor a mirror
    assert (digits.crop_padding, digits.flip, digits.cutout) == (1, False, 0)
    cifar = load_train_config(None, ["data.name=cifar10"]).data  # the paper's recipe
    assert (cifar.crop_padding, cifar.flip, cifar.cutout) == (4, True, 16)
    chosen = load_train_config(None, ["data.name=cifar10", "data.cutout=0"]).data
    assert chosen.cutout == 0 and chosen.flip is True
