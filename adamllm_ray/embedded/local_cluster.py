"""A real multi-node Ray cluster on one machine, for the cluster tests and `adamllm bench submit`: each
node is a `ray start --block` in its own session on 127.0.0.1, with its own CPUs and a custom
resource naming it, and its own temporary directory (nodes of one machine would otherwise share the
session's runtime_resources, and one node re-extracting a job's working directory deletes the
directory another node's job runs in). A node ends with every process of its session (the `ray start`
and all it started, workers included); nothing else on the machine is touched."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(extra: dict | None = None) -> dict:
    """The environment for nodes, submitters and state queries of a loopback-only cluster: this
    interpreter's tools first on PATH, no inherited RAY_ADDRESS, no token for the job API."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (extra or {})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


class LocalCluster:
    def __init__(self, cpus_per_node: int = 2, object_store_mb: int = 1024, env: dict | None = None):
        """`env`: extra environment of the nodes, and so of every job and worker on them."""
        self.cpus, self.object_store_mb, self.env = cpus_per_node, object_store_mb, env
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: dict[str, subprocess.Popen] = {}  # custom resource name -> its `ray start`
        self.temp_root = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: socket paths live below it
        self.started = 0  # `ray start`s so far: each gets temp_root/N
        self.head_args: list[str] = []

    def __enter__(self) -> "LocalCluster":
        os.environ["RAY_AUTH_MODE"] = "disabled"  # this process queries the cluster's state API
        try:
            self.add_node("head_node", head=True)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_node(self, name: str, head: bool = False, timeout_s: float = 120, attempts: int = 3) -> subprocess.Popen:
        """Start a node with custom resource `name` and wait until the cluster lists it as alive. A
        `ray start` that gives up (its raylet must register within 30 s, which a loaded 2-core machine
        does not always manage) is started again, as a cluster's autoscaler launches a node again."""
        for _ in range(attempts):
            proc, log = self._start(name, head)
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if name in self.node_ids():
                        return proc
                except Exception:  # the dashboard is not up yet
                    pass
                time.sleep(1)
            self.lose_node(name)
        raise RuntimeError(f"node {name} did not join the cluster at {self.dashboard} in {attempts} attempts; "
                           f"the last `ray start` printed:\n{log.read_text()[-3000:]}")

    def _start(self, name: str, head: bool) -> tuple[subprocess.Popen, Path]:
        self.started += 1
        # Each node's agent gets its own HTTP port: at Ray's fixed default (52365) the agent of another Ray
        # on the machine holds it, and then no job can be submitted ("No available agent to submit job").
        args = [f"--num-cpus={self.cpus}", f"--resources={json.dumps({name: 1})}", "--node-ip-address=127.0.0.1",
                f"--temp-dir={self.temp_root}/{self.started}", f"--object-store-memory={self.object_store_mb * 2**20}",
                f"--dashboard-agent-listen-port={free_port()}"]
        if head:
            args += ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true", *self.head_args]
        else:
            args += [f"--address=127.0.0.1:{self.gcs_port}"]
        log = Path(self.temp_root, f"{self.started}.log")
        with open(log, "w") as out:
            self.nodes[name] = subprocess.Popen(
                [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args], start_new_session=True,
                stdout=out, stderr=subprocess.STDOUT, env=cluster_env(self.env))
        return self.nodes[name], log

    def alive_nodes(self) -> list:
        from ray.util.state import list_nodes

        return [n for n in list_nodes(address=self.dashboard, raise_on_missing_output=False) if n.state == "ALIVE"]

    def node_ids(self) -> dict[str, str]:
        """Custom resource name -> node id, for the alive nodes."""
        return {name: n.node_id for n in self.alive_nodes() for name in self.nodes if name in n.resources_total}

    def lose_node(self, name: str) -> None:
        """The node's machine is lost: its raylet is SIGKILLed first, then every other process the
        node started (its `ray start` session: workers, engines, agents)."""
        import psutil

        proc = self.nodes.pop(name)
        members = [p for p in psutil.process_iter(["name"]) if _session(p.pid) == proc.pid]
        for p in sorted(members, key=lambda p: p.info["name"] != "raylet"):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            self.lose_node(name)
        shutil.rmtree(self.temp_root, ignore_errors=True)

    def submit(self, args: list[str], working_dir: str, log: Path) -> subprocess.Popen:
        """`adamllm submit` of `adamllm ARGS` with jobs/runtime_env.yaml, as a user runs it; its output
        goes to `log` (see `submission_id`)."""
        cmd = [str(BIN / "adamllm"), "submit", "--address", self.dashboard, "--working-dir", working_dir,
               "--runtime-env", str(Path(working_dir) / "jobs" / "runtime_env.yaml"), "--", "adamllm", *args]
        with open(log, "w") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=cluster_env(),
                                    cwd=working_dir)

    @staticmethod
    def submission_id(log: Path, timeout_s: float = 120) -> str:
        """The job's submission id, from the `submitted ID to ADDRESS` line `adamllm submit` prints first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in log.read_text().splitlines():
                if line.startswith("submitted raysubmit_"):
                    return line.split()[1]
            time.sleep(0.2)
        raise TimeoutError(f"no submission id in {log}")

    def stop_job(self, submission_id: str) -> None:
        """Stop a submitted job (its driver and everything it started), as `ray job stop` does."""
        from ray.job_submission import JobSubmissionClient

        JobSubmissionClient(self.dashboard).stop_job(submission_id)

    def job_actors(self, submission_id: str, class_part: str) -> list:
        """The actors (alive or dead) of a submitted job whose class name contains `class_part`."""
        from ray.job_submission import JobSubmissionClient
        from ray.util.state import list_actors

        driver = JobSubmissionClient(self.dashboard).get_job_info(submission_id).driver_info
        if driver is None:  # the job's driver has not started yet
            return []
        return [a for a in list_actors(address=self.dashboard, filters=[("job_id", "=", driver.id)], detail=True,
                                       limit=10_000, raise_on_missing_output=False)
                if class_part in (a.class_name or "") or class_part in (a.repr_name or "")]


class AutoscalingLocalCluster(LocalCluster):
    """A head running Ray's autoscaler with its fake multi-node provider (the one Ray tests its autoscaler
    with): worker nodes of the declared types are launched on this machine when work waits for their
    resources, and removed after `idle_timeout_minutes` idle. Like `ray.cluster_utils.AutoscalingCluster`,
    whose template file the wheel lacks and whose start and stop run `ray stop --force` (every Ray on the
    machine); here every process stays in this cluster's sessions or under its temporary directory."""

    def __init__(self, head_cpus: float, worker_types: dict[str, dict], idle_timeout_minutes: float = 0.25,
                 object_store_mb: int = 512, env: dict | None = None):
        super().__init__(cpus_per_node=head_cpus, object_store_mb=object_store_mb,
                         env={**(env or {}), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        types = {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}}
        for name, t in worker_types.items():
            types[name] = {"node_config": {}, "min_workers": 0, **t,
                           "resources": {"object_store_memory": object_store_mb * 2**20, **t["resources"]}}
        self.config = {
            "cluster_name": "adamllm-fake", "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{self.gcs_port}"},
            "available_node_types": types, "head_node_type": "ray.head.default", "auth": {},
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes, "docker": {},
            **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                               "cluster_synced_files", "rsync_exclude", "rsync_filter")},
            "file_mounts": {}, "file_mounts_sync_continuously": False,
        }
        self.config_file = Path(self.temp_root, "autoscaling.json")
        self.config_file.write_text(json.dumps(self.config))
        self.head_args = [f"--autoscaling-config={self.config_file}"]

    def run_job(self, args: list[str], log: Path, cwd: str, timeout_s: float) -> int:
        """Exit status of `adamllm ARGS` run as a driver of this cluster, in its own process group (killed
        with it at the timeout), its output in `log`."""
        env = cluster_env({"RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}"})
        with open(log, "w") as out:
            proc = subprocess.Popen([str(BIN / "adamllm"), *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=cwd, start_new_session=True)
            try:
                return proc.wait(timeout=timeout_s)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)

    def worker_nodes(self) -> list:
        """The alive nodes the autoscaler launched (the head excluded)."""
        return [n for n in self.alive_nodes() if "head_node" not in n.resources_total]

    def stop(self) -> None:
        """Every process of this cluster: the head's session (the autoscaler first, so it launches no more),
        then any fake node process left, found by this cluster's temporary directory in its command line."""
        import psutil

        for name in reversed(list(self.nodes)):
            self.lose_node(name)
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(self.temp_root in part for part in (p.info["cmdline"] or [])):
                    p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.temp_root, ignore_errors=True)
