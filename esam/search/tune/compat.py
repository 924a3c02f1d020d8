"""The only place esam touches a library's private names, each checked on the version named.

Everything else uses public APIs (tests/test_layout.py checks that no other module does this).
`check()` fails with the library and version when a name moves; tests/test_compat.py runs it.
"""
from __future__ import annotations

RAY_CHECKED = "2.60.0"
# What Ray Tune copies from the driver's environment into every trial's runtime env that is a credential
CREDENTIAL_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                  "AWS_SESSION_TOKEN"})


def keep_credentials_out_of_trial_envs() -> None:
    """Ray Tune gives no trial actor the driver's AWS keys as runtime-env variables.

    Ray 2.60: `ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE` names them, and each node's
    runtime env agent logs every runtime env it creates in plain text (session_*/logs/
    runtime_env_agent.log). A local Ray's workers have the keys without it (they inherit the
    driver's environment through the raylet); a cluster's nodes need their own.
    """
    from ray.tune.execution import class_cache
    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_VARIABLES


def cluster_mode_off() -> None:
    """If Ray's constants were imported already, the value they read of RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    (which esam sets to 0 for a loopback-only local Ray) is set too (`ray._private.ray_constants`)."""
    import sys
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


# Ray 2.60 has no public call that asks a cluster whether it takes this driver's token: ray.init
# retries for 20 s, printing a C++ warning each second, then raises a bare ConnectionError.

def gcs_address(address: str | None) -> str:
    """The GCS host:port `ray.init(address)` joins, as Ray resolves it (for None and "auto", after
    Ray's own pick-up of a token file, which ray.init does first too)."""
    from ray._private import services
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    if address in (None, "auto"):
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    return services.canonicalize_bootstrap_address(address)


def token_state() -> str:
    """off (token auth not on in this process) | missing (on, no token) | set."""
    from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode
    if get_authentication_mode() != AuthenticationMode.TOKEN:
        return "off"
    return "set" if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True) else "missing"


def ask_gcs(gcs: str) -> None:
    """One call to the GCS at `gcs` with this driver's token; raises Ray's error when refused.

    Token mode with no token at all aborts the process in Ray's C++ client: Ray's own check raises first."""
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    from ray._raylet import GcsClient
    ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    GcsClient(address=gcs)


def check() -> None:
    """Raise RuntimeError naming Ray's version when a name used above is gone."""
    import importlib

    import ray
    wanted = {"ray.tune.execution.class_cache": ["ENV_VARS_TO_PROPAGATE"],
              "ray._private.ray_constants": ["ENABLE_RAY_CLUSTER"],
              "ray._private.services": ["canonicalize_bootstrap_address"],
              "ray._private.authentication.authentication_token_setup": [
                  "maybe_enable_token_auth_if_token_available", "ensure_token_if_auth_enabled"],
              "ray._raylet": ["AuthenticationMode", "AuthenticationTokenLoader", "get_authentication_mode",
                              "GcsClient"]}
    missing = []
    for module, names in wanted.items():
        try:
            found = importlib.import_module(module)
        except ImportError:
            missing.append(module)
            continue
        missing += [f"{module}.{n}" for n in names if not hasattr(found, n)]
    if missing:
        raise RuntimeError(f"ray {ray.__version__}: {', '.join(missing)} gone (esam.search.tune.compat was checked on "
                           f"ray {RAY_CHECKED}); update esam/search/tune/compat.py")
