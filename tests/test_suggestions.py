"""A mistyped config key, value, pick or name ends its one-line error with the nearest valid one."""
import pytest

from esam.cli import default_search_config
from esam.config import load_train_config
from esam.errors import ConfigError
from esam.search.config import load_search_config
from esam.search.front.pareto import check_rule
from esam.suggestions import close_match, did_you_mean


def test_close_match_finds_typos_only():
    assert close_match("trails", ["trials", "concurrency"]) == "trials"
    assert close_match("NSGA2", ["nsga2", "tpe"]) == "nsga2"  # case is no typo to refuse
    assert close_match("zzz", ["trials", "concurrency"]) is None
    assert close_match("trials", ["trials"]) is None  # nothing to suggest for a valid word
    assert close_match(3, ["3"]) is None and close_match(None, ["x"]) is None  # YAML keys may be ints or null
    assert did_you_mean("rhoo", ["rho", "beta"], "optimizer.") == "; did you mean optimizer.rho?"
    assert did_you_mean("cosin", ["cosine"], quote=True) == "; did you mean 'cosine'?"
    assert did_you_mean("zzz", ["cosine"]) == ""


@pytest.mark.parametrize("override, suggestion", [
    ("optimizer.rhoo=0.1", "did you mean optimizer.rho?"),
    ("epoch=3", "did you mean epochs?"),
    ("schedule=cosin", "did you mean 'cosine'?"),
    ("precision=BF16", "did you mean 'bf16'?"),
    ("model=resnet81", "did you mean 'resnet18'?"),  # a registry's names
    ("optimizer.name=looksma", "did you mean 'looksam'?"),
    ("data.name=digit", "did you mean 'digits'?"),
])
def test_training_config_typos(override, suggestion):
    with pytest.raises(ConfigError) as err:
        load_train_config(None, [override])
    message = str(err.value)
    assert message.endswith(suggestion) and "(valid: " in message and "\n" not in message, message


@pytest.mark.parametrize("override, suggestion", [
    ("trails=3", "did you mean trials?"),
    ("sampler.name=nsga", "did you mean 'nsga2'?"),
    ("scheduler=moasah", "did you mean 'moasha'?"),
    ("space.rhoo.low=0.1", "did you mean space.rho?"),
    ("space={method: {choices: [esam, rts]}}", "did you mean 'rst'?"),
    ("references=[sgd, sma]", "did you mean 'sam'?"),
    ("objectives=[{metric: test_ac, mode: max}, {metric: speed_vs_sgd, mode: max}]", "did you mean 'test_acc'?"),
    ("constraints=[speed_vs_sg >= sam]", "did you mean 'speed_vs_sgd'?"),
    ("train.optimizer.rhoo=0.1", "did you mean optimizer.rho?"),
])
def test_search_config_typos(override, suggestion):
    with pytest.raises(ConfigError) as err:
        load_search_config(default_search_config(), [override])
    assert str(err.value).endswith(suggestion), str(err.value)


def test_far_off_words_get_the_list_alone():
    with pytest.raises(ConfigError) as err:
        load_search_config(default_search_config(), ["sampler.name=bayesian"])
    assert "did you mean" not in str(err.value) and "(valid: nsga2, tpe, gp, random)" in str(err.value)


def test_a_mistyped_pick():
    with pytest.raises(ValueError, match="did you mean 'knee'"):
        check_rule("knea")
