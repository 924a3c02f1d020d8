"""esam.search.compat's private Ray attributes still exist on the installed Ray (it names the version it was checked on)."""
import ray

from esam.search import compat


def test_the_private_ray_attributes_esam_uses_exist():
    compat.check()  # raises RuntimeError naming ray's version and compat's checked one when one moved


def test_the_check_names_the_version_when_an_attribute_is_gone(monkeypatch):
    from ray import tune
    original = tune.Tuner.__init__

    def without_internal(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self._local_tuner
    monkeypatch.setattr(tune.Tuner, "__init__", without_internal)
    try:
        compat.check()
    except RuntimeError as err:
        assert f"ray {ray.__version__}" in str(err) and compat.RAY_CHECKED in str(err)
    else:
        raise AssertionError("compat.check() passed without Tuner._local_tuner")
