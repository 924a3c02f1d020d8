"""esam.search.tune.compat's private Ray names still exist on the installed Ray (it names the version it was checked on)."""
import ray

from esam.search.tune import compat


def test_the_private_ray_names_esam_uses_exist():
    compat.check()  # raises RuntimeError naming ray's version and compat's checked one when one moved


def test_the_check_names_the_version_when_a_name_is_gone(monkeypatch):
    from ray.tune.execution import class_cache
    monkeypatch.delattr(class_cache, "ENV_VARS_TO_PROPAGATE")
    try:
        compat.check()
    except RuntimeError as err:
        assert f"ray {ray.__version__}" in str(err) and compat.RAY_CHECKED in str(err)
        assert "ENV_VARS_TO_PROPAGATE" in str(err)
    else:
        raise AssertionError("compat.check() passed without class_cache.ENV_VARS_TO_PROPAGATE")


def test_credentials_stay_out_of_trial_runtime_envs(monkeypatch):
    from ray.tune.execution import class_cache
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", set(class_cache.ENV_VARS_TO_PROPAGATE))
    compat.keep_credentials_out_of_trial_envs()
    assert not compat.CREDENTIAL_VARIABLES & set(class_cache.ENV_VARS_TO_PROPAGATE)
