"""The deployment recipes under deploy/: what can be checked here, checked.

- deploy/kuberay/rayjob.yaml (no Kubernetes here): it parses; it is a RayJob whose entrypoint runs
  `esam search` on a search config that esam itself accepts; every secret comes from a Kubernetes
  Secret, none is written in it; every worker has GPUs, enough for one trial.
- deploy/slurm/esam.sbatch, run for real on two Ray nodes of this machine: `srun` and `scontrol` are
  shims on PATH that run each step here, the node named by `-w` standing at a loopback address of
  its own with a temp dir of its own (as its own machine would). The script starts the head and the
  worker, waits for both, runs the search; SIGTERM to the script (what `scancel --signal=TERM
  --batch` and the time limit's `--signal=B:TERM` send) stops the search as Ctrl-C does and Ray with
  it; the same command again finishes it.
- the same script under Debian's slurm-wlm on one node (slurmctld and slurmd started here, installed
  with apt-get when missing), where it installs and starts: skipped otherwise.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from cluster_helpers import assert_values_agree, free_port, read_stores, trial_results
from conftest import small_search
from faults_helpers import assert_agree, inherited_env, kill_hard, wait_for
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
RAYJOB, SBATCH = ROOT / "deploy/kuberay/rayjob.yaml", ROOT / "deploy/slurm/esam.sbatch"
# What only the driver needs (on the head) and what every Ray container needs: each from the Secret
DRIVER_SECRETS = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "ESAM_OPTUNA_STORAGE",
                  "PGPASSWORD"}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|URI|STORAGE|USERNAME|KEY")


# --- KubeRay --------------------------------------------------------------------------------------------------------

def _rayjob() -> tuple[dict, dict]:
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert sorted(kinds) == ["ConfigMap", "RayJob"], list(kinds)
    return kinds["ConfigMap"], kinds["RayJob"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_rayjob_runs_esam_search_on_a_config_esam_accepts():
    from esam.search.config import search_config_from_dict
    from esam.search.tune.compat import RAY_CHECKED
    config_map, job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["spec"]["rayClusterSpec"]["rayVersion"] == RAY_CHECKED
    # KubeRay's submitter puts the entrypoint into a shell line of its own: a $ there would be expanded in its pod
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint == "sh /etc/esam/run.sh" and "$" not in entrypoint
    command = config_map["data"]["run.sh"].strip()
    assert command.startswith("exec esam search /etc/esam/cluster.yaml --set "), command
    override = re.fullmatch(r'exec esam search /etc/esam/cluster\.yaml --set "optuna_storage=\$(\w+)"', command)
    assert override and override.group(1) == "ESAM_OPTUNA_STORAGE", command

    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert mounts["search"] == "/etc/esam" and volumes["search"]["configMap"]["name"] == config_map["metadata"]["name"]
    # The config as esam reads it, with the override the entrypoint adds
    cfg = search_config_from_dict(yaml.safe_load(config_map["data"]["cluster.yaml"]),
                                  ["optuna_storage=postgresql://esam@db.example:5432/optuna"])
    assert cfg.optuna_storage.startswith("postgresql://") and cfg.mlflow.tracking_uri is None  # both from the Secret
    # results_dir on the volume every pod mounts at the same place
    shared = mounts["shared"]
    assert str(cfg.results_dir).startswith(shared + "/") and volumes["shared"]["persistentVolumeClaim"]
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        assert {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]} >= {shared}
        assert {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]} == {
            volumes["shared"]["persistentVolumeClaim"]["claimName"]}

    # Every GPU worker fits at least one trial; the head trains nothing (num-cpus 0): it runs the driver
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cfg.resources.gpu >= 1
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        gpus = int(resources["limits"]["nvidia.com/gpu"])
        assert gpus >= cfg.resources.gpu and resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert float(resources["limits"]["cpu"]) >= cfg.resources.cpu * gpus / cfg.resources.gpu  # CPUs for each GPU's trial
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_rayjob_takes_every_secret_from_a_kubernetes_secret():
    config_map, job = _rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    images = {c["image"] for c in (head, submitter, *workers)}
    assert len(images) == 1, images  # one esam and Ray everywhere

    for container in (head, submitter, *workers):
        env = _env(container)
        # token authentication on every Ray container and on the submitter, the token from the Secret
        assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "esam-stores", "key": "ray-token"}
        for name, entry in env.items():  # a secret is referenced, never inlined
            if SECRET_NAME.search(name):
                assert "value" not in entry and entry["valueFrom"]["secretKeyRef"]["name"] == "esam-stores", entry
    head_env = _env(head)
    assert DRIVER_SECRETS <= set(head_env), set(head_env)
    for worker in workers:  # the trials never write to MLflow or Optuna: their pods get none of the stores' secrets
        assert not DRIVER_SECRETS & set(_env(worker)), worker["name"]
    assert head_env["RAY_JOB_STOP_WAIT_TIME_S"]["value"].isdigit()

    # No secret in the search config or in the job's runtime env (Ray's job table shows it)
    search = yaml.safe_load(config_map["data"]["cluster.yaml"])
    assert "optuna_storage" not in search and "tracking_uri" not in (search.get("mlflow") or {})
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) == {"env_vars"} and not any(SECRET_NAME.search(k) for k in runtime_env["env_vars"])
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", RAYJOB.read_text())  # no user:password@ in any URL


# --- SLURM ----------------------------------------------------------------------------------------------------------

SRUN_SHIM = r"""#!/bin/bash
# srun for one machine: runs the step here, as the node -w names: its loopback address, its own temp dir
node=""
while [ $# -gt 0 ]; do
    case "$1" in
        -w|--nodelist) node=$2; shift 2 ;;
        --nodelist=*) node=${1#*=}; shift ;;
        -N|-n|-c|--nodes|--ntasks|--cpus-per-task) shift 2 ;;
        --) shift; break ;;
        -*) shift ;;
        *) break ;;
    esac
done
ip=""
for pair in $SHIM_IPS; do [ "${pair%%=*}" = "$node" ] && ip=${pair#*=}; done
[ -n "$ip" ] || { echo "srun shim: unknown node '$node'" >&2; exit 1; }
echo "$node $*" >> "$SHIM_TMP/steps"
if [ "$1" = hostname ]; then echo "$ip"; exit 0; fi
mkdir -p "$SHIM_TMP/$node"
echo $$ >> "$SHIM_TMP/pids"  # the step's task, for scancel: exec keeps the pid
TMPDIR="$SHIM_TMP/$node" exec "$@"
"""
SCANCEL_SHIM = """#!/bin/bash
# scancel --signal=SIG JOBID: SIG to every step's task (never to the batch script), as scancel does
sig=${1#--signal=}
[ -f "$SHIM_TMP/pids" ] && xargs kill -s "$sig" < "$SHIM_TMP/pids" 2>/dev/null
exit 0
"""
SCONTROL_SHIM = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && tr ',' '\\n' <<< "$3"
"""
NODES = {"n1": "127.0.2.2", "n2": "127.0.2.3"}  # apart from the other cluster tests' 127.0.0.x and 127.0.1.x
NAME, EPOCHS = "slurm", 3
STOP_LINE = f"search {NAME} stopped; run the same command again to continue it"


def _alive_under(path: Path) -> list[str]:
    """Command lines of processes naming `path` (Ray's processes name their session directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline:
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _left_after(scratch: Path, wait_s: float = 60) -> list[str]:
    """The processes still naming `scratch` once they had `wait_s` to end."""
    deadline = time.time() + wait_s
    while _alive_under(scratch) and time.time() < deadline:
        time.sleep(1)
    return _alive_under(scratch)




@pytest.fixture
def shimmed(tmp_path):
    """The environment of an sbatch job on nodes n1 and n2 of this machine, srun and scontrol shims first on PATH."""
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("srun", SRUN_SHIM), ("scontrol", SCONTROL_SHIM), ("scancel", SCANCEL_SHIM)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    scratch = Path(tempfile.mkdtemp(prefix="ess", dir="/tmp"))  # short: Ray's socket paths live under it
    (scratch / "driver").mkdir()
    env = {**inherited_env(), "PATH": f"{shims}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SHIM_IPS": " ".join(f"{n}={ip}" for n, ip in NODES.items()), "SHIM_TMP": str(scratch),
           "TMPDIR": str(scratch / "driver"), "PYTHONUNBUFFERED": "1",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": ",".join(NODES), "SLURM_CPUS_PER_TASK": "1",
           "RAY_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(free_port()),
           # ports Ray would otherwise fix (52365, 10001): free ones, whatever else runs here
           "RAY_HEAD_ARGS": f"--ray-client-server-port {free_port()} --dashboard-agent-listen-port {free_port()}",
           "RAY_WORKER_ARGS": f"--dashboard-agent-listen-port {free_port()}"}
    env.pop("RAY_AUTH_TOKEN", None)  # the script makes the allocation's own
    try:
        yield env, scratch
    finally:
        for line in _alive_under(scratch):  # a failed test leaves no Ray behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)


def _sbatch(config: Path, env: dict, cwd: Path) -> subprocess.Popen:
    """The batch script as SLURM runs it on the allocation's first node: bash, in its own session."""
    return subprocess.Popen(["bash", str(SBATCH), str(config)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_the_sbatch_script_runs_a_search_on_two_nodes_stops_on_sigterm_and_continues(shimmed, tmp_path):
    env, scratch = shimmed
    shared = tmp_path / "shared"
    results, tracking_uri = shared / "esam_results", f"sqlite:///{shared / 'mlflow.db'}"
    config = small_search(tmp_path, NAME, trials=2, concurrency=2, references=(), epochs=EPOCHS,
                          results_dir=str(results), mlflow={"tracking_uri": tracking_uri})
    optuna_url = f"sqlite:///{results / NAME / 'optuna.db'}"

    proc = _sbatch(config, env, tmp_path)
    try:
        wait_for(lambda: any(1 <= rows[-1]["epoch"] < EPOCHS for rows in trial_results(results / NAME).values()), proc,
                 timeout=400, what="a trial mid-training")
        os.kill(proc.pid, signal.SIGTERM)  # the batch shell only, as `scancel --signal=TERM --batch` does
        first, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_hard(proc)
    print(first)
    assert "esam.sbatch: 2 Ray nodes up" in first, first
    assert proc.returncode == 143 and STOP_LINE in first and "Traceback" not in first, first[-3000:]
    steps = (scratch / "steps").read_text()
    assert re.search(r"^n1 ray start --head --block --node-ip-address 127\.0\.2\.2 ", steps, re.MULTILINE), steps
    assert re.search(rf"^n2 ray start --block --address 127\.0\.2\.2:{env['RAY_PORT']} --node-ip-address 127\.0\.2\.3 ",
                     steps, re.MULTILINE), steps
    assert _left_after(scratch) == []  # Ray stopped with the script: no process of either node is left

    second = subprocess.run(["bash", str(SBATCH), str(config)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    out = second.stdout + second.stderr
    print(out)
    assert second.returncode == 0 and f"search {NAME}: 2 ESAM trials ended: 2 finished" in out, out[-3000:]
    s = read_stores(shared, NAME, optuna_url, tracking_uri)
    assert_agree(s, epochs=EPOCHS, parent_status="FINISHED")
    assert [t.state.name for t in s.optuna] == ["COMPLETE"] * 2 and s.statuses("trial") == ["FINISHED"] * 2
    assert_values_agree(optuna.load_study(study_name=NAME, storage=optuna_url), MlflowClient(tracking_uri), 2)
    nodes = {r.data.tags["esam.node"].split()[0] for r in s.runs}
    assert nodes <= set(NODES.values()), nodes  # the trials ran on the script's nodes
    assert _left_after(scratch) == []


# --- the same script under SLURM itself, on one node ----------------------------------------------------------------

_slurm_tried = False


def _slurm_installed() -> bool:
    """slurmctld, slurmd and sbatch on PATH, after one `apt-get install -y slurm-wlm` when they are missing."""
    global _slurm_tried
    tools = ("slurmctld", "slurmd", "sbatch", "sinfo")
    if not all(shutil.which(t) for t in tools) and not _slurm_tried and os.geteuid() == 0:
        _slurm_tried = True
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "slurm-wlm"]):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                if subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False).returncode != 0:
                    break
    return all(shutil.which(t) for t in tools)


@pytest.fixture
def slurm(tmp_path):
    """slurmctld and slurmd of their own (one node: this machine), no munge (auth/none): SLURM_CONF for the clients."""
    import socket
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs as their users")
    if not _slurm_installed():
        pytest.skip("Debian's slurm-wlm is not installed and apt-get could not install it")
    home = Path(tempfile.mkdtemp(prefix="esl", dir="/tmp"))
    host = socket.gethostname()
    conf = home / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=esamtest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}", "AuthType=auth/none", "CredType=cred/none", "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={home}/state", f"SlurmdSpoolDir={home}/spool", f"SlurmctldPidFile={home}/slurmctld.pid",
        f"SlurmdPidFile={home}/slurmd.pid", "ProctrackType=proctrack/pgid", "TaskPlugin=task/none",
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "ReturnToService=2", "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "SwitchType=switch/none",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN",
        "PartitionName=esam Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    try:
        for cmd in (["slurmctld", "-D", "-f", str(conf)], ["slurmd", "-D", "-f", str(conf), "-N", host]):
            with open(home / f"{cmd[0]}.log", "w") as log:
                daemons.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True))
            time.sleep(2)
        deadline = time.time() + 90
        while subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True,
                             check=False).stdout.strip() != "idle":
            if time.time() > deadline or any(d.poll() is not None for d in daemons):
                logs = "\n".join((home / f"{n}.log").read_text()[-1500:] for n in ("slurmctld", "slurmd"))
                pytest.skip(f"slurmctld and slurmd did not start here:\n{logs}")
            time.sleep(1)
        yield {"SLURM_CONF": str(conf)}
    finally:
        for daemon in daemons:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_the_sbatch_script_under_slurm_on_one_node(slurm, tmp_path):
    shared = tmp_path / "shared"
    config = small_search(tmp_path, "slurmd", trials=1, references=(), epochs=1, results_dir=str(shared / "results"),
                          mlflow={"tracking_uri": f"sqlite:///{shared / 'mlflow.db'}"})
    scratch = Path(tempfile.mkdtemp(prefix="esr", dir="/tmp"))  # the job's TMPDIR: Ray's session folder, short
    env = {**inherited_env(), **slurm, "TMPDIR": str(scratch),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(free_port()),
           "RAY_HEAD_ARGS": f"--ray-client-server-port {free_port()} --dashboard-agent-listen-port {free_port()}"}
    env.pop("RAY_AUTH_TOKEN", None)
    try:
        # The header asks for 3 nodes of 16 CPUs: the command line fits it to this machine, as sbatch options do
        done = subprocess.run(["sbatch", "--wait", "--nodes=1", f"--cpus-per-task={os.cpu_count()}",
                               f"--output={tmp_path}/esam-%j.out", str(SBATCH), str(config)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        out = "".join(p.read_text() for p in tmp_path.glob("esam-*.out"))
        print(done.stdout, done.stderr, out)
        assert done.returncode == 0, (done.stderr, out[-3000:])
        assert "esam.sbatch: 1 Ray nodes up" in out and "search slurmd: 1 ESAM trials ended: 1 finished" in out, out
        # Ray stopped cleanly: its node drained on SIGTERM, not killed by srun
        assert "received SIGTERM" in out and "forcing job termination" not in out, out[-3000:]
        assert _left_after(scratch) == []
    finally:
        for line in _alive_under(scratch):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)
