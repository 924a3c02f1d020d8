"""Start or join Ray for a search; a local Ray listens on the loopback interface only.

A Ray node's gRPC servers (GCS, raylet, every worker, the driver) bind to the node's IP address.
By default Ray picks the machine's outward-facing address, so a local search would accept
connections from the network. Ray picks the loopback address instead when it believes it runs on
a desktop OS without clusters (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`); with that, every process
of a local Ray listens on 127.0.0.1 (checked by tests/test_local_ray.py with `ss`). A cluster is
something the user starts on purpose (`ray start`), and joining one changes nothing here.

A cluster refuses a driver without its token (`RAY_AUTH_MODE=token`, Ray 2.60's default): `ray.init`
then retries for 20 s, printing a C++ `InvalidAuthToken` warning each second, and raises a bare
ConnectionError (an OSError, which the search took for a results_dir that cannot be written).
`check_ray_token` asks the GCS once, quietly, and names the token instead (tests/test_ray_token.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys

from esam.errors import ConfigError, first_line
from esam.search.tune.compat import ask_gcs, cluster_mode_off, gcs_address, token_state

_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_TOKEN_REFUSED = ("InvalidAuthToken", "Unauthenticated", "no authentication token was found")


def is_local(address: str | None) -> bool:
    """True when the search starts its own Ray rather than joining a running cluster."""
    address = address or os.environ.get("RAY_ADDRESS")
    return address in (None, "", "local")


def _loopback_only() -> None:
    # Read by Ray when its constants module is imported, and inherited by the GCS, the raylet and
    # the workers this driver spawns; if Ray was imported already, set the constant it read too.
    os.environ[_CLUSTER_SWITCH] = "0"
    cluster_mode_off()


def _cluster_address(address: str | None) -> str | None:
    """The GCS host:port that ray.init(address) joins, as Ray resolves it; None where no check applies."""
    if address and "://" in address:  # Ray Client (ray://): not the GCS protocol
        return None
    return gcs_address(address)


@contextlib.contextmanager
def _stderr_discarded():
    """Ray's C++ client warns on fd 2 itself (no Python logger to quiet) when the GCS refuses a call."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _refused(err: BaseException | None) -> bool:
    """True when Ray's error (or one it wraps, even as traceback text) is a refused or missing token."""
    from ray.exceptions import AuthenticationError
    while err is not None:
        if isinstance(err, AuthenticationError) or any(s in str(err) for s in _TOKEN_REFUSED):
            return True
        err = err.__cause__ or err.__context__
    return False


def _token_line(where: str) -> str:
    state = token_state()
    if state == "off":
        why, fix = "none sent: RAY_AUTH_MODE is not token", "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"
    elif state == "missing":
        why, fix = "none is set", "set RAY_AUTH_TOKEN"
    else:
        why, fix = "not the cluster's", "set RAY_AUTH_TOKEN"
    return (f"Ray at {where} refused the token ({why}); {fix} to the token its head was started with "
            f"(the head's RAY_AUTH_TOKEN, or its ~/.ray/auth_token)")


def check_ray_token(address: str | None) -> None:
    """Before the search writes anything: a cluster that refuses this driver's token is one line, not 20 warnings.

    One GCS call (the one ray.init's first retry makes), only when the port answers: an unreachable
    address is left to ray.init, which waits for a GCS that is still starting.
    """
    if is_local(address):
        return
    where = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        gcs = _cluster_address(address)
        if gcs is None:
            return
        host, port = gcs.rsplit(":", 1)
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except Exception:  # noqa: BLE001 - no cluster found or none listening: ray.init says so
        return
    try:
        with _stderr_discarded():
            ask_gcs(gcs)
    except Exception as err:  # noqa: BLE001 - anything but a refused token is ray.init's to report
        if _refused(err):
            raise ConfigError(_token_line(gcs if where == "auto" else where)) from None  # "auto": name what it found


def init_ray(address: str | None, runtime_env: dict | None = None) -> bool:
    """Join `address` (or $RAY_ADDRESS) or start a loopback-only local Ray; True when this call started one.

    `runtime_env` is the job's (esam/search/trials/shipping.py: the user's project as working_dir). A Ray this
    process started before keeps its own: pass it to your own ray.init then."""
    import ray
    if ray.is_initialized():
        return False
    local = is_local(address)
    # Ray 2.60 turns token auth on for a new local Ray (or a token file found for "auto") and says so on
    # stderr each time: keep it, quietly.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    check_ray_token(address)
    if local:
        _loopback_only()
    # Quiet terminal: the search prints one line per trial; Ray's tables would drown it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A failed or retried trial is one progress line (callbacks.Progress), not Ray's traceback per
    # attempt; the traceback stays in the trial's error.txt.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # "local", not None: None would join the last cluster `ray start` made on this machine, if any.
    try:
        ray.init(address="local" if local else address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=True, runtime_env=runtime_env)
    except Exception as err:
        if runtime_env and isinstance(err, ValueError) and "Package size" in str(err):  # Ray's upload limit
            if ray.is_initialized():
                ray.shutdown()
            raise ConfigError(f"{runtime_env['working_dir']} is too large to ship to Ray's workers "
                              f"({str(err).split('. ')[0]}); list what they need not get in its .rayignore, "
                              f"or install your code on every node") from None
        # A ConnectionError is an OSError: left as it is, the search would report it as results_dir's.
        where = address or os.environ.get("RAY_ADDRESS") or "auto"
        if not local and _refused(err):  # check_ray_token could not ask, or the token changed since
            raise ConfigError(_token_line(where)) from None
        if not local and isinstance(err, ConnectionError):
            raise ConfigError(f"cannot join Ray at {where} ({first_line(err)}); start the cluster (`ray start --head`) "
                              f"or fix --address / RAY_ADDRESS") from None
        raise
    return True
