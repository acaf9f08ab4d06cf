"""A heterogeneous Ray cluster on one machine: real `ray start` processes on 127.0.0.1.

Ray resolves 127.0.0.1 to the machine's own address for node addresses; every process still runs here.

    head      no CPUs for replicas: runs the GCS, the dashboard, the Serve controller and the HTTP proxy
    gpu node  advertises 1 GPU (none is there: the vision stage then falls back to the CPU EP) and `gpu_node`
    cpu node  advertises CPUs and `cpu_node`, the resource decoder, preprocess and ingress replicas ask for

so the GPU cluster config's placement runs here and can be inspected in the Ray dashboard.

    python cluster/local_cluster.py start      # prints the address, the dashboard URL and the env to export
    python cluster/local_cluster.py deploy     # `serve deploy` of the GPU config, scaled to this machine
    python cluster/local_cluster.py status
    python cluster/local_cluster.py stop

Why it looks the way it does (Ray 2.60 on a shared machine):
- Its own temp dir and ports, so `ray.init()` elsewhere on the machine never joins this cluster by accident
  (ray.init reads the default temp dir's ray_current_cluster; ours is written under our temp dir) and our nodes
  never collide with another local Ray's default ports.
- Token auth on (`RAY_AUTH_MODE=token`), as a real cluster should run, with the user's default token (created the
  way `ray get-auth-token --generate` does when missing): Ray caches the token per process, so a test process that
  already ran a local `ray.init()` must see the same one. Clients need both variables (`env` prints them).
- Each node may have its own environment (NodeSpec.env): nodes of a real cluster share no disk, so a test gives
  each its own MMSERVE_CACHE_DIR (and the store's AWS variables), which its replicas inherit.
- Each node is a `ray start --block` in its own process group; stop signals exactly those groups (never
  `ray stop`, which would kill every Ray on the machine) and removes our ray_current_cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("MMSERVE_LOCAL_CLUSTER_DIR", "/tmp/mmserve-cluster"))
BASE_PORT = int(os.environ.get("MMSERVE_LOCAL_CLUSTER_PORT", "26379"))
TOKEN_FILE = Path.home() / ".ray" / "auth_token"  # Ray's default token path
GPU_NODE_RESOURCE = "gpu_node"
CPU_NODE_RESOURCE = "cpu_node"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    num_cpus: int
    num_gpus: int = 0
    resources: dict = field(default_factory=dict)
    head: bool = False
    env: dict = field(default_factory=dict)  # this node's own environment on top of ours (e.g. its MMSERVE_CACHE_DIR)


def default_nodes(gpu_cpus: int = 1, cpu_cpus: int = 2) -> list[NodeSpec]:
    """Logical CPU counts, not cores: replicas ask for fractions, and the cpu node's count bounds how many
    CPU-stage replicas autoscaling can place."""
    return [
        NodeSpec("head", num_cpus=0, head=True),
        NodeSpec("gpu", num_cpus=gpu_cpus, num_gpus=1, resources={GPU_NODE_RESOURCE: 1}),
        NodeSpec("cpu", num_cpus=cpu_cpus, resources={CPU_NODE_RESOURCE: 1}),
    ]


@dataclass
class ClusterInfo:
    """What `start` wrote to <dir>/cluster.json: enough for clients and for `stop`."""
    address: str  # GCS address for ray.init(address=...)
    base_port: int  # GCS port; the client server, dashboard and per-node agent ports follow it
    dashboard_url: str
    token: str
    temp_dir: str
    process_groups: dict[str, int]  # node name -> pid of its `ray start --block` (= its process group id)
    node_resources: dict[str, dict]
    metrics_ports: dict[str, int] = field(default_factory=dict)  # node name -> its Prometheus endpoint's port
    node_env: dict[str, dict] = field(default_factory=dict)  # node name -> NodeSpec.env, to restart it the same

    def auth_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def client_env(self) -> dict[str, str]:
        """For `ray status`, `ray list actors` (RAY_ADDRESS) and `serve status/deploy` (RAY_DASHBOARD_ADDRESS)."""
        return {"RAY_ADDRESS": self.address, "RAY_DASHBOARD_ADDRESS": self.dashboard_url, **self.auth_env()}


def default_token() -> str:
    if not TOKEN_FILE.is_file():
        TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        TOKEN_FILE.write_text(secrets.token_hex(32))
        TOKEN_FILE.chmod(0o600)
    return TOKEN_FILE.read_text().strip()


def _ports(base_port: int, index: int) -> dict[str, int]:
    """Distinct per-node ports: several raylets share 127.0.0.1, and Ray's fixed defaults would collide."""
    base = base_port + 20 + 10 * index
    return {"--dashboard-agent-listen-port": base, "--dashboard-agent-grpc-port": base + 1,
            "--runtime-env-agent-port": base + 2, "--metrics-export-port": base + 3}


def _command(node: NodeSpec, index: int, temp_dir: Path, object_store_bytes: int,
             base_port: int = BASE_PORT) -> list[str]:
    ray_cli = str(Path(sys.executable).parent / "ray")  # the ray of this Python's environment, PATH or not
    cmd = [ray_cli, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
           f"--num-cpus={node.num_cpus}", f"--num-gpus={node.num_gpus}", f"--resources={json.dumps(node.resources)}",
           f"--object-store-memory={object_store_bytes}", "--disable-usage-stats"]
    cmd += [f"{flag}={port}" for flag, port in _ports(base_port, index).items()]
    if node.head:
        cmd += ["--head", f"--port={base_port}", f"--ray-client-server-port={base_port + 1}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={base_port + 2}"]
    else:
        cmd += [f"--address=127.0.0.1:{base_port}"]
    return cmd


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode} before port {port} opened")
        if _port_open(port):
            return
        time.sleep(0.5)
    raise TimeoutError(f"port {port} did not open in {timeout_s}s")


def use_token_auth(info: ClusterInfo) -> None:
    """Make this process a token-auth client of the cluster. Ray reads RAY_AUTH_MODE into a cached config and
    caches the token, so a process that imported or ran Ray before must refresh both (as ray.init does itself when
    it turns token auth on)."""
    os.environ.update(info.auth_env())
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def alive_nodes(info: ClusterInfo) -> list[dict]:
    """Alive nodes as the GCS sees them: node id and total resources."""
    use_token_auth(info)
    from ray._raylet import GcsClient

    nodes = GcsClient(address=info.address).get_all_node_info()
    return [{"node_id": n.node_id.hex(), "resources": dict(n.resources_total)}
            for n in nodes.values() if n.state == 0]  # 0 = ALIVE in GcsNodeInfo.GcsNodeState


def start(directory: Path = DEFAULT_DIR, nodes: list[NodeSpec] | None = None, timeout_s: float = 180,
          object_store_bytes: int = 200 * 2**20, base_port: int = BASE_PORT) -> ClusterInfo:
    nodes = nodes or default_nodes()
    if (directory / "cluster.json").exists():
        raise RuntimeError(f"{directory}/cluster.json exists: a cluster is running there (stop it first)")
    temp_dir = directory / "ray"
    if len(str(temp_dir)) > 40:  # Ray puts unix sockets under <temp_dir>/session_<timestamp>/sockets/
        raise ValueError(f"{directory}: path too long for Ray's unix sockets (108 bytes in all); use a short one")
    temp_dir.mkdir(parents=True, exist_ok=True)
    info = ClusterInfo(address=f"127.0.0.1:{base_port}", base_port=base_port,
                       dashboard_url=f"http://127.0.0.1:{base_port + 2}",
                       token=default_token(), temp_dir=str(temp_dir), process_groups={},
                       node_resources={n.name: {"CPU": n.num_cpus, "GPU": n.num_gpus, **n.resources} for n in nodes},
                       node_env={n.name: dict(n.env) for n in nodes})
    if _port_open(base_port):  # a head here would join that GCS and fail on its session name
        raise RuntimeError(f"port {base_port} is in use (another Ray cluster?): pick another base port "
                           f"(MMSERVE_LOCAL_CLUSTER_PORT)")
    launcher = _Launcher(directory, info, object_store_bytes)
    try:
        for index, node in enumerate(nodes):
            proc = launcher.launch(index, node)
            if node.head:
                _wait_port(base_port, proc, timeout_s)
        launcher.wait_joined(nodes, timeout_s)
    except BaseException:
        stop(directory)
        raise
    return info


class _Launcher:
    """Starts one `ray start --block` per node, each in its own process group, and relaunches a worker node whose
    raylet died at startup: with several Ray instances on one machine, a port Ray picked can be taken before its
    raylet binds it ("bind: Address already in use"), and on a loaded machine a raylet can miss `ray start`'s fixed
    30 s registration wait ("The current node timed out during startup")."""

    RELAUNCHES = 4

    def __init__(self, directory: Path, info: ClusterInfo, object_store_bytes: int):
        self.directory, self.info, self.object_store_bytes = directory, info, object_store_bytes
        # A node drains for up to 30 s on SIGTERM by default; nothing here needs more than a few seconds.
        self.env = {**os.environ, **info.auth_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: dict[str, subprocess.Popen] = {}

    def launch(self, index: int, node: NodeSpec) -> subprocess.Popen:
        cmd = _command(node, index, Path(self.info.temp_dir), self.object_store_bytes, self.info.base_port)
        with open(self.directory / f"{node.name}.log", "a") as log:
            proc = subprocess.Popen(cmd, env={**self.env, **node.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[node.name] = proc
        self.info.process_groups[node.name] = proc.pid
        self.info.metrics_ports[node.name] = _ports(self.info.base_port, index)["--metrics-export-port"]
        _write(self.directory, self.info)  # written at once, so `stop` can clean up after a failed start
        return proc

    def wait_joined(self, nodes: list[NodeSpec], timeout_s: float) -> None:
        relaunches = {n.name: self.RELAUNCHES for n in nodes}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(alive_nodes(self.info)) >= len(nodes):
                return
            for index, node in enumerate(nodes):
                if self.procs[node.name].poll() is None:
                    continue
                if node.head or relaunches[node.name] == 0:
                    raise RuntimeError(f"node {node.name} exited; see {self.directory}/{node.name}.log")
                relaunches[node.name] -= 1
                self.launch(index, node)
            time.sleep(1)
        raise TimeoutError(f"{len(nodes)} nodes did not join in {timeout_s}s; logs in {self.directory}")


def _write(directory: Path, info: ClusterInfo) -> None:
    (directory / "cluster.json").write_text(json.dumps(asdict(info), indent=2))


def read_info(directory: Path = DEFAULT_DIR) -> ClusterInfo:
    return ClusterInfo(**json.loads((directory / "cluster.json").read_text()))


def _session_pids(temp_dir: str) -> list[int]:
    """Processes whose command line names our temp dir: Ray workers that left our process groups."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if temp_dir.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def stop(directory: Path = DEFAULT_DIR, grace_s: float = 40) -> None:
    """SIGTERM our node process groups (workers first), then SIGKILL what is left after `grace_s`."""
    if not (directory / "cluster.json").exists():
        return
    info = read_info(directory)
    groups = list(info.process_groups.values())[::-1]  # workers before the head: they deregister cleanly
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            _signal_group(pgid, sig)
        for pid in _session_pids(info.temp_dir):
            _signal_pid(pid, sig)
        if _wait_gone(groups, info.temp_dir, grace_s):
            break
    (Path(info.temp_dir) / "ray_current_cluster").unlink(missing_ok=True)
    (directory / "cluster.json").unlink()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:  # a `ray start` this process launched stays a zombie in its group until reaped: that is not alive
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:  # not our child (another process started the cluster): init reaps it
        pass
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(groups: list[int], temp_dir: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_group_alive(g) for g in groups) and not _session_pids(temp_dir):
            return True
        time.sleep(0.5)
    return False


def kill_node(directory: Path, name: str) -> None:
    """Lose a node the hard way: SIGKILL its `ray start` process group (raylet, agents); its workers exit when
    they lose their raylet. For failure tests."""
    _signal_group(read_info(directory).process_groups[name], signal.SIGKILL)


def restart_node(directory: Path, name: str, timeout_s: float = 240) -> None:
    """Start a lost worker node again with the same resources and ports; returns when it has joined. The limit
    leaves room for several relaunches: on a loaded machine each can spend ray start's own 30 s wait."""
    info = read_info(directory)
    index = list(info.node_resources).index(name)
    res = dict(info.node_resources[name])
    node = NodeSpec(name, num_cpus=res.pop("CPU"), num_gpus=res.pop("GPU"), resources=res,
                    env=info.node_env.get(name, {}))
    launcher = _Launcher(directory, info, 200 * 2**20)
    proc, relaunches = launcher.launch(index, node), _Launcher.RELAUNCHES
    deadline = time.monotonic() + timeout_s
    while len(alive_nodes(info)) < len(info.node_resources):
        if proc.poll() is not None and relaunches > 0:  # a port of the lost node's not free yet: try again
            relaunches -= 1
            time.sleep(2)
            proc = launcher.launch(index, node)
        elif proc.poll() is not None or time.monotonic() > deadline:
            tail = (directory / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"node {name} did not rejoin; {directory}/{name}.log ends:\n" + "\n".join(tail))
        time.sleep(0.5)


def deploy(info: ClusterInfo, directory: Path, config: dict) -> None:
    """`serve deploy` through the dashboard's REST API, as an operator would, with the cluster's token."""
    import yaml

    path = directory / "serve-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    serve_cli = Path(sys.executable).parent / "serve"
    subprocess.run([str(serve_cli), "deploy", str(path), "-a", info.dashboard_url], check=True,
                   env={**os.environ, **info.auth_env()}, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "deploy", "stop", "status", "env"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state, logs and Ray temp dir")
    parser.add_argument("--http-port", type=int, default=8000, help="deploy: the API's port on 127.0.0.1")
    parser.add_argument("--artifacts", default=None, help="deploy: a built artifact dir; default: the demo "
                                                          "preset, built into ~/.cache/mmserve on first start")
    args = parser.parse_args(argv)
    if args.command == "start":
        info = start(args.dir)
        print(f"cluster up: {info.address}  dashboard: {info.dashboard_url}")
        print("clients need:  eval $(python cluster/local_cluster.py env)")
    elif args.command == "deploy":
        from local_config import local_serve_config  # a sibling script module

        deploy(read_info(args.dir), args.dir, local_serve_config(args.http_port, args.artifacts))
        print(f"deployed: http://127.0.0.1:{args.http_port}/ready turns 200 when every stage runs")
    elif args.command == "stop":
        stop(args.dir)
        print("cluster stopped")
    elif args.command == "env":
        print(" ".join(f"export {k}={v};" for k, v in read_info(args.dir).client_env().items()))
    else:
        for node in alive_nodes(read_info(args.dir)):
            print(node["node_id"][:12], json.dumps({k: v for k, v in node["resources"].items()
                                                    if not k.startswith(("node:", "memory", "object_store"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
