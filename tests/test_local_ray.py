"""A local search's Ray listens on the loopback interface only."""
import ipaddress
import os
import re
import shutil
import subprocess

import pytest

from esam.search.tune.local_ray import init_ray, is_local

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> set[int]:
    pairs = [tuple(map(int, line.split())) for line in
             subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines()]
    found, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in pairs:
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return found


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(address, process name) of every TCP listener owned by `pids`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
            address = line.split()[3].rsplit(":", 1)[0].strip("[]")
            found.append((address, ",".join(re.findall(r'\(\("([^"]+)"', line))))
    return found


def _is_loopback(address: str) -> bool:
    if address.startswith("::ffff:"):  # an IPv4-mapped IPv6 address
        address = address[len("::ffff:"):]
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # '*' or '0.0.0.0': every interface


def test_address_decides_local(monkeypatch):
    assert is_local(None) and is_local("local")
    assert not is_local("auto") and not is_local("10.0.0.5:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert not is_local(None)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_local_ray_listens_on_loopback_only():
    import ray
    assert init_ray(None)
    try:
        @ray.remote
        def worker_pid() -> int:
            return os.getpid()
        workers = set(ray.get([worker_pid.remote() for _ in range(2)]))
        mine = _descendants(os.getpid())
        assert workers <= mine
        listeners = _listening(mine)
        names = {name for _, name in listeners}
        assert {"gcs_server", "raylet"} <= names, listeners  # the check saw Ray's servers
        assert any(n.startswith("ray::") for n in names), listeners  # ... and its workers
        assert [lst for lst in listeners if not _is_loopback(lst[0])] == []
    finally:
        ray.shutdown()
