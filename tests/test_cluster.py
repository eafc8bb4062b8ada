"""The cluster side: configs that Ray's own validator accepts, the launch
scripts, and a real job on a two-node Ray cluster started on this machine.

The two-node test starts every process itself (two `ray start --block`, one
MLflow server) with its own temp dir, ports and token, and stops each of them
by process id in a `finally`; it never runs `ray stop`, which would end every
Ray on the machine.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
log = logging.getLogger("test_cluster")
BIN = Path(sys.executable).parent  # the venv's ray, mlflow, dsr-tune
CONFIGS = ["cluster.yaml", "cluster-local.yaml"]
COMMAND_KEYS = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"]


def prepared(name: str) -> dict:
    """The config as `ray up` sees it after its offline checks (no provider call)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / name).read_text()))
    validate_config(config)
    return config


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_validator_accepts_config(name):
    config = prepared(name)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # every node joins with the token
    assert config["file_mounts"]["~/dsr_tune"] == "."
    setup = " ".join(config["setup_commands"])
    assert "requirements.lock" in setup and "RAY_AUTH_MODE=token" in setup
    assert all("RAY_AUTH_MODE=token" in c or "ray stop" in c for c in config["worker_start_ray_commands"])
    assert any("MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in c for c in config["worker_start_ray_commands"])
    assert "--dashboard-host" not in " ".join(config["head_start_ray_commands"])  # stays on 127.0.0.1


def test_cloud_config_has_cpu_head_and_8_gpu_workers():
    config = prepared("cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU") == 8]
    assert len(gpu) == 1 and 1 <= gpu[0]["max_workers"] <= config["max_workers"]
    assert gpu[0]["min_workers"] == 0  # autoscaled: no GPU node while nothing runs
    assert gpu[0]["resources"]["CPU"] >= 8 * 11  # the 8-GPU configs reserve 11 CPUs per worker
    assert any("MLFLOW_ARTIFACTS=s3://" in c for c in config["head_setup_commands"])
    text = (ROOT / "cluster.yaml").read_text()
    for placeholder in ("ami-CHANGE-ME", "fs-CHANGE-ME", "CHANGE-ME-bucket", "123456789012"):
        lines = [l for l in text.splitlines() if placeholder in l]
        assert lines and all("CHANGE" in l for l in lines), placeholder  # every value to change says so


@pytest.mark.parametrize("name", CONFIGS)
def test_config_commands_are_valid_bash(name):
    # YAML eats an unquoted " #..." as a comment: a truncated command shows up here
    config = prepared(name)
    for key in COMMAND_KEYS:
        for command in config.get(key, []):
            result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert result.returncode == 0, f"{name} {key}: {command!r}: {result.stderr}"


def test_local_config_keeps_every_listed_machine():
    config = prepared("cluster-local.yaml")
    ips = config["provider"]["worker_ips"]
    (node,) = config["available_node_types"].values()  # the local provider's single node type
    assert config["max_workers"] == len(ips) == node["min_workers"] == node["max_workers"]  # set by Ray itself


def _commands(path: Path) -> list[str]:
    """Shell commands written in a file, comment marks removed and backslash lines joined."""
    out, cur = [], ""
    for line in path.read_text().splitlines():
        text = line.strip().lstrip("#").strip()
        cur += " " + text.removesuffix("\\").strip()
        if not text.endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return out


def test_every_cluster_sweep_command_has_a_shared_output():
    # a sweep that joins a cluster without --output is refused: every documented one gives it
    files = [ROOT / "cluster.yaml", ROOT / "cluster-local.yaml", ROOT / "docs" / "cluster.md",
             *sorted((ROOT / "launch" / "k8s").glob("*.yaml"))]
    sweeps = [(f.name, c) for f in files for c in _commands(f) if "dsr-tune sweep " in c and "search_spaces/" in c]
    assert len(sweeps) >= 6, sweeps
    for name, command in sweeps:
        assert "--output /mnt/shared/" in command, (name, command)


def test_ray_validator_refuses_broken_configs():
    from click.exceptions import ClickException

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["head_node_type"] = "missing"
    with pytest.raises(ValueError, match="head_node_type"):
        prepared_dict(config)
    local = yaml.safe_load((ROOT / "cluster-local.yaml").read_text())
    del local["provider"]["worker_ips"]
    with pytest.raises(ClickException, match="worker_ips"):
        prepared_dict(local)


def prepared_dict(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


# ---------------------------------------------------------------- launch scripts


def test_launch_scripts_parse():
    for script in sorted((ROOT / "launch").glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def launch(*args: str, env: dict | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launch" / "cluster.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, **kw)


def test_cluster_sh_makes_a_private_token(tmp_path):
    made = launch("token", env={"HOME": str(tmp_path)})
    token = tmp_path / ".ray" / "auth_token"
    assert made.returncode == 0 and token.exists(), made.stdout + made.stderr
    assert len(token.read_text().strip()) >= 32 and token.stat().st_mode & 0o077 == 0  # owner-only
    before = token.read_text()
    assert launch("token", env={"HOME": str(tmp_path)}).returncode == 0 and token.read_text() == before  # kept


def test_cluster_sh_dry_run_cycle(tmp_path):
    env = {"DRY_RUN": "1", "CLUSTER": "cluster-local.yaml", "HOME": str(tmp_path)}
    up = launch("up", env=env)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    token = lines.index("created ~/.ray/auth_token")  # no token yet: one is made first
    ray_up = lines.index(".venv/bin/ray up -y cluster-local.yaml ")
    mlflow = next(i for i, l in enumerate(lines) if "ray exec cluster-local.yaml" in l and "mlflow_server.sh" in l)
    assert token < ray_up < mlflow and lines[mlflow].rstrip().endswith("start")
    sub = launch("submit", "--no-wait", "--", "dsr-tune", "sweep", "search_spaces/digits_demo.yaml", env=env)
    assert sub.stdout.split()[1:5] == ["job", "submit", "--runtime-env", "launch/runtime_env.yaml"], sub.stdout
    assert sub.stdout.split()[-4:] == ["--", "dsr-tune", "sweep", "search_spaces/digits_demo.yaml"]
    fwd = launch("forward", env=env)
    assert "--port-forward 8265 --port-forward 5000" in fwd.stdout
    down = launch("down", env=env).stdout.splitlines()
    assert "mlflow_server.sh" in down[0] and "stop" in down[0] and "ray down -y cluster-local.yaml" in down[1]
    assert launch("submit", "dsr-tune", "sweep", env=env).returncode == 2  # no "--": refused
    assert launch("nonsense", env=env).returncode == 2


def test_runtime_env_uploads_the_code_not_the_environment(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    runtime_env = yaml.safe_load((ROOT / "launch" / "runtime_env.yaml").read_text())
    assert runtime_env["working_dir"] == "."
    package = tmp_path / "job.zip"
    # what `ray job submit` uploads, even where .gitignore is not honoured (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1)
    create_package(str(ROOT), package, include_gitignore=False, excludes=runtime_env["excludes"])
    names = set(zipfile.ZipFile(package).namelist())
    code = {str(f.relative_to(ROOT)) for f in (ROOT / "dsr_tune").rglob("*.py")}
    assert code <= names, sorted(code - names)  # every module of the package (a bare "data/" once dropped one)
    assert {"launch/cluster.sh", "launch/check_cluster.py", "requirements.lock", "search_spaces/digits_demo.yaml",
            "configs/digits.yaml"} <= names
    assert not [n for n in names if n.startswith((".venv/", ".git/", "runs/", "mlruns/"))]
    assert package.stat().st_size < 20 * 2**20  # Ray refuses working dirs over 500 MiB; ours is code only


def test_kubernetes_manifests():
    import ray

    docs: dict[str, list] = {}
    for path in sorted((ROOT / "launch" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs.setdefault(doc["kind"], []).append(doc)
    (cluster,), (job,), (service,) = docs["RayCluster"], docs["RayJob"], docs["Service"]
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("dsr-tune ") and job["spec"]["shutdownAfterJobFinishes"] is True
    assert "--output /mnt/shared/" in job["spec"]["entrypoint"]  # the claim every pod mounts
    mlflow_uri = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == ray.__version__  # the image installs requirements.lock's Ray
        pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for pod in pods:
            env = {e["name"]: e for c in pod["spec"]["containers"] for e in c.get("env", [])}
            assert env["MLFLOW_TRACKING_URI"]["value"] == mlflow_uri
            if spec is cluster["spec"]:  # our token, so launch/cluster.sh works against it
                assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        if spec is not cluster["spec"]:
            assert spec["authOptions"]["mode"] == "token"  # KubeRay makes and distributes the token
        (gpu,) = [g for g in spec["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") == 8]
        assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert "-r requirements.lock" in (ROOT / "launch" / "k8s" / "Dockerfile").read_text()


# ---------------------------------------------------------------- two Ray nodes on this machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def this_machine_ip() -> str:
    """The address other nodes would use, found as cluster.yaml finds the head's."""
    out = [a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split() if ":" not in a]
    return out[0] if out else "127.0.0.1"


class LoopbackCluster:
    """A Ray head and a second Ray node, both on this machine, each a `ray start
    --block` process in its own session, with token auth and the environment
    cluster.yaml gives real nodes (RAY_AUTH_MODE, MLFLOW_TRACKING_URI)."""

    def __init__(self, base: Path, tracking_uri: str, cpus_per_node: int = 1):
        self.base, self.cpus = base, cpus_per_node
        self.token = base / "token"
        self.token.write_text(secrets.token_hex(32))
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        # RAY_ADDRESS: helpers inside Ray (Train's placement-group cleaner) that look
        # for "the" local cluster find several on a shared machine; a real node has one.
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token),
                    "MLFLOW_TRACKING_URI": tracking_uri, "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}",
                    "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.env.pop("RAY_API_SERVER_ADDRESS", None)
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, *args: str) -> None:
        ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                 "--metrics-export-port"]  # two nodes on one machine: nothing may share a default port
        cmd = [str(BIN / "ray"), "start", "--block", *args, "--num-cpus", str(self.cpus), "--temp-dir",
               str(self.base / name), "--object-store-memory", str(256 * 2**20), "--min-worker-port", "0",
               "--max-worker-port", "0", "--disable-usage-stats"]
        for flag in ports:
            cmd += [flag, str(free_port())]
        log = open(self.base / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start(self, timeout: float = 90) -> None:
        self._start("h", "--head", "--port", str(self.gcs_port), "--dashboard-port", str(self.dashboard_port),
                    "--ray-client-server-port", str(free_port()))
        self._wait(lambda: "Ray runtime started" in (self.base / "h.log").read_text(), timeout, "the head")
        self._start("w", "--address", f"127.0.0.1:{self.gcs_port}")
        self._wait(lambda: len(self.alive_nodes()) == 2, timeout, "the second node")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            if ready():
                return
            time.sleep(1)
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(self.base.glob("*.log")))
        raise RuntimeError(f"{what} did not come up:\n{logs}")

    def ray(self, *args: str, timeout: float = 60) -> str:
        env = {**self.env, "RAY_API_SERVER_ADDRESS": self.dashboard}
        return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=True).stdout

    def alive_nodes(self) -> list[dict]:
        try:
            out = self.ray("list", "nodes", "--address", self.dashboard, "--format", "json", "--filter", "state=ALIVE")
        except subprocess.CalledProcessError:
            return []  # the dashboard is not answering yet
        return json.loads(out)

    def stop(self) -> None:
        """Stop what we started: the second node, then the head (SIGTERM lets
        `ray start --block` end its children), then anything left that carries
        our token path in its environment (the job driver runs in a session of
        its own), by process id."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the node's process group
            except ProcessLookupError:
                pass
            proc.wait(10)
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftover_pids(self) -> list[int]:
        marker = f"RAY_AUTH_TOKEN_PATH={self.token}".encode()
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in environ.read_bytes().split(b"\0"):
                    found.append(int(environ.parent.name))
            except OSError:  # gone, or not ours to read
                continue
        return [pid for pid in found if pid != os.getpid()]


# The demo sweep cut to fit a CI budget: 2 searched trials (one at each sparsity), 2 epochs, one seed, no baselines
# (tests/test_sweep covers the pairing). Each trial trains on 2 DDP workers of 0.9 CPU, and a
# node has 1 CPU: every trial must put one worker on each node, whatever the timing. (One
# worker per trial left it to chance: a trial that ended early freed its node for the next.)
SHORT_SWEEP = ["search.samples=1", "seeds=[1]", "train.epochs=2", "optim.milestones=[1]", "sparsity.stop_epoch=2",
               "sparsity.period_schedule=[[0, 15]]", "baselines=[]", "dense=false",
               "train.workers=2", "train.cpus_per_worker=0.9", "search.trial_cpus=0.05"]


def mlflow_server(action: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ROOT / "launch" / "mlflow_server.sh"), action], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_node_loopback_job():
    """A head and a second node on this machine, MLflow on the "head" bound as
    on a real cluster, two jobs submitted and followed with launch/cluster.sh:
    the node check logs to MLflow from each node, and the demo sweep (cut
    short) runs its trials on both nodes and records them in MLflow."""
    base = Path(tempfile.mkdtemp(prefix="dsrc", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    tracking_uri = f"http://{this_machine_ip()}:{free_port()}"
    mlflow_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DIR": str(base / "mlflow"),
                  "PATH": f"{BIN}:{os.environ['PATH']}"}
    cluster = LoopbackCluster(base, tracking_uri)
    try:
        t0 = time.time()
        mlflow_start = mlflow_server("start", mlflow_env)  # boots while Ray does
        cluster.start()
        assert mlflow_start.wait(120) == 0, mlflow_start.stdout.read()
        log.info("MLflow and two Ray nodes up after %.0f s", time.time() - t0)
        node_ids = {n["node_id"] for n in cluster.alive_nodes()}
        job_env = {"RAY_API_SERVER_ADDRESS": cluster.dashboard, "RAY_AUTH_TOKEN_PATH": str(cluster.token),
                   "PATH": cluster.env["PATH"]}
        check_id, sweep_id = f"check-{secrets.token_hex(3)}", f"sweep-{secrets.token_hex(3)}"
        # The sweep's folder is where a real cluster has shared storage (here the nodes share a disk).
        for job_id, command in ((check_id, ["python", "launch/check_cluster.py"]),
                                (sweep_id, ["dsr-tune", "sweep", "search_spaces/digits_demo.yaml", *SHORT_SWEEP,
                                            "--output", str(base / "sweep")])):
            submitted = launch("submit", "--no-wait", "--submission-id", job_id, "--", *command, env=job_env)
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr

        # 1. the node check: a task on each node logged an MLflow run over the cluster address
        check = launch("logs", check_id, env=job_env, timeout=180)
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
        reports = [json.loads(l) for l in check.stdout.splitlines() if l.startswith('{"node_id"')]
        assert {r["node_id"] for r in reports} == node_ids and len(node_ids) == 2, ("nodes checked", reports)
        assert all(r["tracking_uri"] == tracking_uri and not r["errors"] for r in reports), ("check", reports)
        assert not [r for r in reports if r["code"].startswith(str(ROOT))], ("code", reports)  # the job's upload
        import mlflow

        client = mlflow.MlflowClient(tracking_uri="http://127.0.0.1:" + tracking_uri.rsplit(":", 1)[1])
        runs = client.search_runs([client.get_experiment_by_name("cluster-check").experiment_id])
        assert {r.data.tags["node_id"] for r in runs} == node_ids

        # 2. the sweep: its trials' Train workers ran on both nodes, every run is in MLflow
        logs = launch("logs", sweep_id, env=job_env, timeout=400)
        assert logs.returncode == 0, logs.stdout[-5000:] + logs.stderr[-2000:]
        log.info("both jobs done after %.0f s", time.time() - t0)
        workers = json.loads(cluster.ray("list", "actors", "--address", cluster.dashboard, "--format", "json",
                                         "--filter", "class_name=RayTrainWorker", "--detail", "--limit", "1000"))
        by_trial: dict[str, set] = {}  # a trial's worker group is one placement group
        for w in workers:
            by_trial.setdefault(w["placement_group_id"], set()).add(w["node_id"])
        assert len(by_trial) >= 2 and all(nodes == node_ids for nodes in by_trial.values()), ("Train workers", by_trial)
        runs = client.search_runs([client.get_experiment_by_name("digits_demo").experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        roles = sorted(r.data.tags.get("role") for r in children)
        search_cells = {r.data.params["sparsity.sparsity"] for r in children if r.data.tags.get("role") == "search"}
        # the 2 search trials, then the selected config of each sparsity they reached, re-trained on seed 1
        assert len(parents) == 1 and roles == ["search"] * 2 + ["selected"] * len(search_cells), \
            ("MLflow runs", [r.data.tags for r in runs])
        assert {r.data.tags.get("method") for r in children} == {"dsr"}
        for child in children:
            assert child.info.status == "FINISHED"
            history = client.get_metric_history(child.info.run_id, "epoch/test_acc")  # one value per epoch
            assert len(history) == int(child.data.params["train.epochs"]), (child.data.tags, len(history))
    finally:
        t1 = time.time()
        cluster.stop()
        mlflow_server("stop", mlflow_env).wait(60)
        log.info("stopped everything in %.0f s", time.time() - t1)
        leftovers = cluster.leftover_pids() + [int(p) for p in subprocess.run(
            ["pgrep", "-f", str(base)], capture_output=True, text=True).stdout.split()]
        shutil.rmtree(base, ignore_errors=True)
    assert leftovers == [], "processes of the test cluster survived"
