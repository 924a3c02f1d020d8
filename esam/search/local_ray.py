"""Start or join Ray for a search; a local Ray listens on the loopback interface only.

A Ray node's gRPC servers (GCS, raylet, every worker, the driver) bind to the node's IP address.
By default Ray picks the machine's outward-facing address, so a local search would accept
connections from the network. Ray picks the loopback address instead when it believes it runs on
a desktop OS without clusters (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`); with that, every process
of a local Ray listens on 127.0.0.1 (checked by tests/test_local_ray.py with `ss`). A cluster is
something the user starts on purpose (`ray start`), and joining one changes nothing here.
"""
from __future__ import annotations

import logging
import os
import sys

_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_local(address: str | None) -> bool:
    """True when the search starts its own Ray rather than joining a running cluster."""
    address = address or os.environ.get("RAY_ADDRESS")
    return address in (None, "", "local")


def _loopback_only() -> None:
    # Read by Ray when its constants module is imported, and inherited by the GCS, the raylet and
    # the workers this driver spawns; if Ray was imported already, set the constant it read too.
    os.environ[_CLUSTER_SWITCH] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None) -> bool:
    """Join `address` (or $RAY_ADDRESS) or start a loopback-only local Ray; True when this call started one."""
    import ray
    if ray.is_initialized():
        return False
    local = is_local(address)
    if local:
        _loopback_only()
    # Quiet terminal: the search prints one line per trial; Ray's tables would drown it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A failed or retried trial is one progress line (callbacks.Progress), not Ray's traceback per
    # attempt; the traceback stays in the trial's error.txt.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    if local:  # Ray 2.60 turns token auth on for a new local Ray and says so on stderr each time: keep it, quietly
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # "local", not None: None would join the last cluster `ray start` made on this machine, if any.
    ray.init(address="local" if local else address, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, configure_logging=True)
    return True
