"""Starts real Sluice processes for the Python client tests, in each mode.

Every test that takes the `server` or `group_server` fixture runs twice:
`[kraft]` against one `sluice server` (KRaft, combined roles) and `[zk]`
against `sluice cluster up --mode zk --zookeepers 3 --brokers 3` (a real
three-server ZooKeeper ensemble and three brokers). Both fixtures offer the
same surface: `bootstrap`, `port` and `data` (broker 1's), `brokers`
(id, port) of every broker, `kill9()` then `restart()` (every process of
the cluster, ZooKeeper's too, in ZK mode), `stop()`.
"""

import os
import random
import socket
import re
import signal
import subprocess
import tempfile
import threading
import time

import pytest

BIN = os.environ.get("SLUICE_BIN", "target/release/sluice")


class Server:
    def __init__(self, extra=()):
        self.dir = tempfile.TemporaryDirectory(prefix="sluice-py-")
        self.data = os.path.join(self.dir.name, "data")
        self.log_path = os.path.join(self.dir.name, "server.log")
        self.extra = list(extra)
        self.port = 0
        self.proc = None
        self._launch()

    def _launch(self):
        args = [
            BIN, "server",
            "--set", f"listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "--set", f"log.dirs={self.data}",
            "--set", "metrics.listen=",
        ]
        for e in self.extra:
            args += ["--set", e]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
        found = {}

        def read():
            for line in self.proc.stdout:
                m = re.search(r"serving Kafka on [^ ]+:(\d+)", line)
                if m:
                    found["port"] = int(m.group(1))
                    break

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(60)
        if "port" not in found:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + open(self.log_path).read())
        self.port = found["port"]

    mode = "kraft"

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    @property
    def brokers(self):
        return [(1, self.port)]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self):
        self._launch()

    def log_tail(self, lines=80):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def ports_free(ports):
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def cluster_ports(port, zk, brokers, zookeepers):
    """The ports `sluice cluster up` takes: brokers +0.., ZooKeeper
    clients +0.., quorum +707.., election +1707..."""
    wanted = [port + i for i in range(brokers)]
    wanted += [zk + off + i for off in (0, 707, 1707) for i in range(zookeepers)]
    return wanted


def free_port_bases(brokers, zookeepers):
    """A first broker port and a first ZooKeeper port whose cluster ports
    are all free right now."""
    while True:
        port = random.randrange(20000, 30000)
        # Below 32768, Linux's ephemeral range, where outgoing connections
        # take ports (ZooKeeper's take up to zk + 1709).
        zk = random.randrange(23000, 31000)
        if ports_free(cluster_ports(port, zk, brokers, zookeepers)):
            return port, zk


class ZkCluster:
    """`sluice cluster up --mode zk`: three ZooKeeper servers and three
    brokers, each its own process, stopped with SIGTERM (brokers first)."""

    mode = "zk"
    ZOOKEEPERS = 3
    BROKERS = 3

    def __init__(self, extra=()):
        self.dir = tempfile.TemporaryDirectory(prefix="sluice-py-zk-")
        self.data_dir = os.path.join(self.dir.name, "cluster")
        self.log_path = os.path.join(self.dir.name, "cluster-up.log")
        self.extra = list(extra)
        self.proc = None
        self.port, self.zk_port = free_port_bases(self.BROKERS, self.ZOOKEEPERS)
        for attempt in range(3):
            try:
                self._launch()
                return
            except PortTaken:
                # Someone took a port between the check and the bind.
                self.port, self.zk_port = free_port_bases(self.BROKERS, self.ZOOKEEPERS)
        raise RuntimeError("no free ports for the cluster:\n" + self.log_tail())

    def _launch(self):
        args = [
            BIN, "cluster", "up", "--mode", "zk",
            "--zookeepers", str(self.ZOOKEEPERS), "--brokers", str(self.BROKERS),
            "--data-dir", self.data_dir,
            "--port", str(self.port), "--zk-port", str(self.zk_port),
            # The tests make single-replica topics and produce with the
            # clients' default acks=all, as against the standalone server;
            # `cluster up`'s min.insync.replicas=2 would refuse those writes
            # (NOT_ENOUGH_REPLICAS), as Kafka does.
            "--set", "min.insync.replicas=1",
        ]
        for e in self.extra:
            args += ["--set", e]
        log = open(self.log_path, "ab")
        # Its own process group: kill9() takes every process of the cluster.
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        )
        found = {}
        up = threading.Event()

        def read():
            with open(self.log_path, "a") as copy:
                for line in self.proc.stdout:
                    copy.write(line)
                    copy.flush()
                    m = re.match(r"\s*broker\s+(\d+)\s+127\.0\.0\.1:(\d+)\s+(\S+)", line)
                    if m:
                        found.setdefault("brokers", []).append((int(m.group(1)), int(m.group(2)), m.group(3)))
                    if "The cluster is up" in line:
                        up.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + 180
        while not up.wait(0.2):
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill9()
                text = self.log_tail()
                if "is not free" in text:
                    raise PortTaken()
                raise RuntimeError("sluice cluster up --mode zk did not come up:\n" + text)
        self._brokers = sorted(found["brokers"])
        assert len(self._brokers) == self.BROKERS, self._brokers

    @property
    def bootstrap(self):
        return ",".join(f"127.0.0.1:{port}" for _, port, _ in self._brokers)

    @property
    def brokers(self):
        return [(id, port) for id, port, _ in self._brokers]

    @property
    def data(self):
        """Broker 1's log.dirs."""
        return self._brokers[0][2]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.kill9()

    def kill9(self):
        """kill -9 of every process: ZooKeeper servers and brokers."""
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def restart(self):
        """The same cluster (data dirs and ports) started again, once the
        killed processes have let their ports go."""
        ports = cluster_ports(self.port, self.zk_port, self.BROKERS, self.ZOOKEEPERS)
        deadline = time.monotonic() + 30
        while not ports_free(ports) and time.monotonic() < deadline:
            time.sleep(0.2)
        self._launch()

    def log_tail(self, lines=80):
        out = []
        paths = [self.log_path]
        if os.path.isdir(self.data_dir):
            paths += sorted(
                os.path.join(self.data_dir, f) for f in os.listdir(self.data_dir) if f.endswith(".log")
            )
        for path in paths:
            try:
                with open(path, errors="replace") as f:
                    out.append(f"--- {path}\n" + "".join(f.readlines()[-lines:]))
            except OSError:
                pass
        return "".join(out)


class PortTaken(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Fixtures look at the outcome to print what helps after a failure.
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def failed(request):
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


MODES = ["kraft", "zk"]


def start(mode, extra=()):
    return Server(extra=extra) if mode == "kraft" else ZkCluster(extra=extra)


def finish(s, failed_test):
    if failed_test:
        print(f"--- {s.mode}: tail of the logs ---\n{s.log_tail()}")
    if s.mode == "zk":
        s.stop()
    s.kill9()
    s.dir.cleanup()


def run_server(request, mode, extra=()):
    s = start(mode, extra)
    yield s
    finish(s, failed(request))


@pytest.fixture(scope="module")
def shared_zk_cluster(request):
    """One ZooKeeper-mode cluster for a module's tests that neither
    restart it nor need settings of their own (each uses its own topics
    and groups); it stops after the module's last test."""
    clusters = {}

    def get(extra):
        key = tuple(extra)
        if key not in clusters:
            clusters[key] = ZkCluster(extra=extra)
        return clusters[key]

    yield get
    for c in clusters.values():
        finish(c, request.session.testsfailed > 0)


def pytest_collection_modifyitems(config, items):
    """A test marked kraft_only("why") has no ZooKeeper-mode run: the
    behaviour it checks is KRaft mode's alone, or (with client=...) one
    client cannot follow it in ZooKeeper mode (the reason says why)."""
    chosen, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        zk_run = "zk" in (params.get("server"), params.get("group_server"))
        marker = item.get_closest_marker("kraft_only")
        # kraft_only(reason, client=...) limits it to one client's runs.
        only_client = marker.kwargs.get("client") if marker else None
        if only_client is not None and params.get("client") != only_client:
            marker = None
        if zk_run and marker is not None:
            dropped.append(item)
        else:
            chosen.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = chosen


def own_cluster(request):
    return (
        request.node.get_closest_marker("server_settings") is not None
        or request.node.get_closest_marker("restarts_server") is not None
    )


@pytest.fixture(params=MODES)
def server(request, shared_zk_cluster):
    if request.param == "zk":
        yield shared_zk_cluster(())
        return
    yield from run_server(request, request.param)


@pytest.fixture(params=MODES)
def group_server(request, shared_zk_cluster):
    # Kafka delays a new group's first rebalance by 3 s to gather members;
    # the tests skip that wait. A test adds settings of its own with
    # @pytest.mark.server_settings("key=value", ...), and gets its own
    # cluster then, as a test marked restarts_server does.
    marker = request.node.get_closest_marker("server_settings")
    extra = ["group.initial.rebalance.delay.ms=0", *(marker.args if marker else ())]
    if request.param == "zk" and not own_cluster(request):
        yield shared_zk_cluster(extra)
        return
    yield from run_server(request, request.param, extra=extra)


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s")
