"""Consumer groups with real clients (confluent-kafka and kafka-python) against
a real `sluice server`: partitions split between members, rebalances on join,
on leave and on kill -9 of a member process, the assignors, static
membership, committed offsets and groups across a server kill -9, the admin
APIs, and the coordinator's errors.

Group members run as separate processes (group_member.py) that write what
they consume, commit and are assigned to a file each; the tests read those.
"""

import collections
import os
import signal
import subprocess
import sys
import time

import kafka
import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import failed
from wire import Wire

KAFKA_PYTHON_MAJOR = int(kafka.__version__.split(".")[0])
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "group_member.py")
CLIENTS = ["confluent", "kafka-python"]

# The kafka-python side uses 3.x APIs (group_metadata(), list_groups(), ...).
kafka_python_3 = pytest.mark.skipif(KAFKA_PYTHON_MAJOR < 3, reason="needs kafka-python 3.x")
CLIENT_PARAMS = [
    pytest.param("confluent", id="confluent"),
    pytest.param("kafka-python", id="kafka-python", marks=kafka_python_3),
]


# ---------------------------------------------------------------- helpers


def wait_until(condition, timeout, what):
    """Polls `condition` until it returns something true; fails after `timeout`
    seconds with `what` (a string, or a callable giving one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what() if callable(what) else what}")
        time.sleep(0.1)


def create_topic(server, topic, partitions):
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(15)


def produce(server, topic, partitions, per_partition):
    """Produces per_partition messages to every partition; returns the
    (partition, offset) of each."""
    producer = Producer({"bootstrap.servers": server.bootstrap})
    delivered, errors = set(), []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.add((msg.partition(), msg.offset()))

    for i in range(per_partition):
        for p in range(partitions):
            producer.produce(topic, value=f"{p}-{i}".encode(), partition=p, on_delivery=report)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []
    assert len(delivered) == partitions * per_partition
    return delivered


def end_offsets(produced):
    ends = {}
    for p, o in produced:
        ends[p] = max(ends.get(p, 0), o + 1)
    return ends


class Member:
    """One group_member.py process and what it has written."""

    def __init__(self, workdir, name, server, client, group, topic, **opts):
        self.name = name
        self.path = os.path.join(workdir, f"{name}.out")
        self.err_path = os.path.join(workdir, f"{name}.err")
        args = [
            sys.executable, HELPER, "--client", client, "--bootstrap", server.bootstrap,
            "--group", group, "--topic", topic, "--out", self.path, "--client-id", name,
        ]
        for key, value in opts.items():
            if value is not None:
                args += ["--" + key.replace("_", "-"), str(value)]
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)

    def lines(self):
        try:
            with open(self.path) as f:
                data = f.read()
        except FileNotFoundError:
            return []
        # The last piece is empty or a line still being written.
        return [line.split(" ") for line in data.split("\n")[:-1]]

    def assignment(self):
        """The client's current assignment, or None before the first one."""
        current = None
        for line in self.lines():
            if line[0] == "assignment":
                current = {int(p) for p in line[1].split(",")} if len(line) > 1 and line[1] else set()
        return current

    def consumed(self):
        return [(int(l[1]), int(l[2])) for l in self.lines() if l[0] == "consumed"]

    def committed(self):
        """partition -> the highest offset this member committed."""
        out = {}
        for l in self.lines():
            if l[0] == "committed":
                out[int(l[1])] = max(out.get(int(l[1]), 0), int(l[2]))
        return out

    def commit_failures(self):
        return [l for l in self.lines() if l[0] == "commitfail"]

    def generation(self):
        """(generation id, member id) last reported, or None."""
        current = None
        for l in self.lines():
            if l[0] == "generation":
                current = (int(l[1]), l[2] if len(l) > 2 else "")
        return current

    def callbacks(self):
        return [" ".join(l) for l in self.lines() if l[0] in ("assign", "revoke", "lost")]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=30):
        """SIGTERM: the member closes its consumer (and so leaves the group)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not close within {timeout}s: {self.describe()}")
        assert rc == 0, f"{self.name} exited with {rc}: {self.describe()}"
        assert self.lines()[-1] == ["closed"], self.describe()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def describe(self):
        commit_ms = [int(l[1]) for l in self.lines() if l[0] == "committime"]
        lines = [" ".join(l) for l in self.lines() if l[0] not in ("consumed", "committed", "committime")]
        try:
            with open(self.err_path, errors="replace") as f:
                err = f.read()[-3000:]
        except OSError:
            err = ""
        return (
            f"\n== {self.name} (alive={self.alive()}) assignment={sorted(self.assignment() or [])} "
            f"consumed={len(self.consumed())} committed={self.committed()} "
            f"commits={len(commit_ms)} slowest={max(commit_ms, default=0)}ms\n"
            + "\n".join(lines[-25:])
            + (f"\n-- stderr --\n{err}" if err else "")
        )


@pytest.fixture
def spawn(request, tmp_path, group_server):
    started = []

    def start(name, client, group, topic, **opts):
        m = Member(str(tmp_path), name, group_server, client, group, topic, **opts)
        started.append(m)
        return m

    yield start
    for m in started:
        m.kill()
    if failed(request):
        for m in started:
            print(m.describe())


def describe_all(members):
    return lambda: "".join(m.describe() for m in members)


def is_stable(members, partitions):
    """Every partition is assigned to exactly one of `members` (the live
    members of the group), and each of them has at least one."""
    sets = [m.assignment() for m in members]
    if any(not s for s in sets):
        return False
    return set().union(*sets) == set(range(partitions)) and sum(len(s) for s in sets) == partitions


def wait_stable(members, partitions, timeout=30):
    wait_until(
        lambda: is_stable(members, partitions),
        timeout,
        lambda: f"{partitions} partitions split between {[m.name for m in members]}" + describe_all(members)(),
    )
    return {m.name: m.assignment() for m in members}


def wait_consumed(members, produced, timeout=30):
    def missing():
        seen = set()
        for m in members:
            seen.update(m.consumed())
        return produced - seen

    wait_until(
        lambda: not missing(),
        timeout,
        lambda: f"{len(missing())} messages never consumed, e.g. {sorted(missing())[:5]}" + describe_all(members)(),
    )


def wait_committed(members, produced, timeout=20):
    """Waits until the members' commits reach the end of every partition."""
    ends = end_offsets(produced)

    def committed():
        out = {}
        for m in members:
            for p, o in m.committed().items():
                out[p] = max(out.get(p, 0), o)
        return out

    wait_until(lambda: committed() == ends, timeout, lambda: f"commits {committed()} reach {ends}" + describe_all(members)())


def consumption_counts(members):
    counts = collections.Counter()
    for m in members:
        counts.update(m.consumed())
    return counts


def check_once_except_uncommitted_of(members, produced, killed=()):
    """Every produced message was consumed; a message was consumed twice only
    if a killed member consumed it after its last commit for that partition
    (and someone else then read it again from the committed offset)."""
    counts = consumption_counts(members)
    missing = produced - set(counts)
    assert not missing, f"never consumed: {sorted(missing)[:20]}" + describe_all(members)()
    assert set(counts) <= produced, f"consumed what was never produced: {sorted(set(counts) - produced)[:20]}"
    uncommitted = set()
    for k in killed:
        last = k.committed()
        uncommitted |= {(p, o) for p, o in k.consumed() if o >= last.get(p, -1)}
    bad = {key: n for key, n in counts.items() if n > 1 and (key not in uncommitted or n > 2)}
    assert not bad, (
        f"{len(bad)} messages consumed more than once without a killed member's uncommitted read, "
        f"e.g. {sorted(bad.items())[:10]}" + describe_all(members)()
    )
    return counts


STATES = {
    # kafka-python reports the protocol's strings, confluent an enum.
    "Stable": "STABLE",
    "Empty": "EMPTY",
    "PreparingRebalance": "PREPARING_REBALANCING",
    "CompletingRebalance": "COMPLETING_REBALANCING",
    "Dead": "DEAD",
}


def kp_admin(server):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=server.bootstrap)


def list_groups(client, server):
    """group id -> state name (confluent's ConsumerGroupState names)."""
    if client == "confluent":
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        result = admin.list_consumer_groups(request_timeout=10).result(15)
        assert not result.errors, result.errors
        return {g.group_id: g.state.name for g in result.valid}
    admin = kp_admin(server)
    try:
        return {g["group_id"]: STATES.get(g.get("group_state"), g.get("group_state")) for g in admin.list_groups()}
    finally:
        admin.close()


def describe_group(client, server, group):
    """(state name, assignor, {client id: (member id, instance id, partitions)})"""
    if client == "confluent":
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        d = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
        members = {
            m.client_id: (m.member_id, m.group_instance_id, {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions})
            for m in d.members
        }
        return d.state.name, d.partition_assignor, members
    admin = kp_admin(server)
    try:
        d = admin.describe_groups([group])[group]
    finally:
        admin.close()
    assert d["error"] is None, d
    members = {}
    for m in d["members"]:
        assignment = m["member_assignment"]
        tps = set()
        if assignment:
            for t in assignment.assigned_partitions if hasattr(assignment, "assigned_partitions") else assignment["assigned_partitions"]:
                name, parts = (t.topic, t.partitions) if hasattr(t, "topic") else (t["topic"], t["partitions"])
                tps |= {(name, p) for p in parts}
        members[m["client_id"]] = (m["member_id"], m["group_instance_id"], tps)
    return STATES.get(d["group_state"], d["group_state"]), d["protocol_data"], members


def group_offsets(client, server, group):
    """{(topic, partition): committed offset} of every committed offset."""
    if client == "confluent":
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=10)[group].result(15)
        for tp in res.topic_partitions:
            assert tp.error is None, tp
        return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions if tp.offset >= 0}
    admin = kp_admin(server)
    try:
        res = admin.list_group_offsets([group])[group]
    finally:
        admin.close()
    return {(tp.topic, tp.partition): om.offset for tp, om in res.items() if om.offset >= 0}


# ------------------------------------------------- membership and assignors

ASSIGNORS = [
    ("confluent", "range"),
    ("confluent", "roundrobin"),
    ("confluent", "cooperative-sticky"),
    ("kafka-python", "range"),
    ("kafka-python", "roundrobin"),
    ("kafka-python", "sticky"),
    ("kafka-python", "cooperative-sticky"),
]


@pytest.mark.parametrize(
    "client,assignor",
    [pytest.param(c, a, id=f"{c}-{a}", marks=kafka_python_3 if c == "kafka-python" else ()) for c, a in ASSIGNORS],
)
def test_three_members_split_six_partitions_and_consume_each_message_once(group_server, spawn, client, assignor):
    server = group_server
    topic = group = f"split-{client}-{assignor}"
    create_topic(server, topic, 6)
    # Read while the members join one after another (each join a rebalance).
    produced = produce(server, topic, 6, 50)
    members = [spawn(f"m{i}", client, group, topic, assignor=assignor) for i in range(3)]
    final = wait_stable(members, 6, timeout=45)

    sets = sorted((sorted(s) for s in final.values()))
    if assignor == "range":
        assert sets == [[0, 1], [2, 3], [4, 5]], final
    elif assignor == "roundrobin":
        assert sets == [[0, 3], [1, 4], [2, 5]], final
    else:
        assert [len(s) for s in sets] == [2, 2, 2], final

    # The coordinator knows the same: the chosen protocol and each member's
    # assignment as the leader handed it out.
    state, protocol, described = wait_until(
        lambda: (lambda d: d if d[0] == "STABLE" else None)(describe_group(client, server, group)),
        15,
        "the group described as Stable",
    )
    assert protocol == assignor
    assert {cid: parts for cid, (_, _, parts) in described.items()} == {
        name: {(topic, p) for p in s} for name, s in final.items()
    }

    later = produce(server, topic, 6, 50)
    produced |= later
    wait_consumed(members, produced)
    wait_committed(members, produced)
    counts = check_once_except_uncommitted_of(members, produced)
    assert set(counts.values()) == {1}
    # What was produced after the split was read by the partition's owner.
    for m in members:
        for p, o in m.consumed():
            if (p, o) in later:
                assert p in final[m.name], (m.name, p, o)
    assert group_offsets(client, server, group) == {(topic, p): o for p, o in end_offsets(produced).items()}
    for m in members:
        m.stop()
    assert list_groups(client, server).get(group) == "EMPTY"


@pytest.mark.parametrize("client", CLIENT_PARAMS)
def test_rebalance_on_join_leave_and_kill9_of_a_member(group_server, spawn, client):
    server = group_server
    topic = group = f"rebalance-{client}"
    create_topic(server, topic, 6)
    # session.timeout.ms at Kafka's group.min.session.timeout.ms (the default
    # is 45 s) so the killed member's partitions move within the test, with
    # heartbeats to match; small batches and a little "processing" per batch
    # so the killed member is likely to die holding uncommitted messages.
    opts = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000, batch=10, process_delay=0.05)
    produced = produce(server, topic, 6, 20)

    m1 = spawn("m1", client, group, topic, **opts)
    wait_stable([m1], 6)
    m2 = spawn("m2", client, group, topic, **opts)
    wait_stable([m1, m2], 6)
    assert any(c.startswith("revoke") for c in m1.callbacks()), m1.describe()
    produced |= produce(server, topic, 6, 20)
    m3 = spawn("m3", client, group, topic, **opts)
    wait_stable([m1, m2, m3], 6)
    produced |= produce(server, topic, 6, 20)
    wait_consumed([m1, m2, m3], produced)

    # A graceful leave rebalances at once, not after the session timeout.
    start = time.monotonic()
    m2.stop()
    wait_stable([m1, m3], 6, timeout=20)
    took = time.monotonic() - start
    assert took < 4.5, f"rebalance after LeaveGroup took {took:.1f}s (the session timeout is 6 s)"

    # kill -9 while m3 is consuming.
    batch = produce(server, topic, 6, 60)
    produced |= batch
    wait_until(lambda: any(c in batch for c in m3.consumed()), 15, describe_all([m1, m3]))
    m3.kill()
    killed_at = time.monotonic()
    wait_stable([m1], 6, timeout=25)
    took = time.monotonic() - killed_at
    # The partitions moved because the session expired (a heartbeat may have
    # been just under way, hence the slack).
    assert took > 3.5, f"the killed member's partitions moved after {took:.1f}s, before its session timed out"

    produced |= produce(server, topic, 6, 20)
    wait_consumed([m1, m2, m3], produced)
    wait_committed([m1, m2, m3], produced)
    m1.stop()
    check_once_except_uncommitted_of([m1, m2, m3], produced, killed=[m3])
    assert group_offsets(client, server, group) == {(topic, p): o for p, o in end_offsets(produced).items()}


@pytest.mark.parametrize("client", CLIENT_PARAMS)
def test_a_member_that_stops_polling_loses_its_partitions_after_max_poll_interval(group_server, spawn, client):
    server = group_server
    topic = group = f"stuck-{client}"
    create_topic(server, topic, 6)
    # Heartbeats run on the clients' own threads and keep the session alive;
    # only max.poll.interval.ms can take partitions from a stuck application.
    opts = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_interval_ms=10000)
    produced = produce(server, topic, 6, 20)
    m1 = spawn("m1", client, group, topic, **opts)
    m2 = spawn("m2", client, group, topic, **opts)
    wait_stable([m1, m2], 6, timeout=45)
    wait_consumed([m1, m2], produced)
    wait_committed([m1, m2], produced)

    m2.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: ["stalled"] in m2.lines(), 5, m2.describe)
    stalled_at = time.monotonic()
    produced |= produce(server, topic, 6, 20)
    wait_until(lambda: m1.assignment() == set(range(6)), 40, describe_all([m1, m2]))
    took = time.monotonic() - stalled_at
    assert took > 9, f"the stuck member lost its partitions after {took:.1f}s, before max.poll.interval.ms"
    # m1 reads on from the stuck member's commits: nothing lost, nothing twice.
    wait_consumed([m1, m2], produced)
    wait_committed([m1, m2], produced)
    counts = check_once_except_uncommitted_of([m1, m2], produced)
    assert set(counts.values()) == {1}
    _, _, described = describe_group(client, server, group)
    assert set(described) == {"m1"}
    m2.kill()
    m1.stop()


@pytest.mark.parametrize("client", CLIENT_PARAMS)
def test_static_member_restarted_within_its_session_keeps_assignment_and_generation(group_server, spawn, client):
    server = group_server
    topic = group = f"static-{client}"
    create_topic(server, topic, 6)
    # Static members (group.instance.id) with a 10 s session: long enough to
    # restart a killed member inside it, short enough to then wait it out.
    opts = dict(session_timeout_ms=10000, heartbeat_interval_ms=1000)
    produced = produce(server, topic, 6, 20)
    s1 = spawn("s1", client, group, topic, instance_id="inst-1", **opts)
    wait_stable([s1], 6)
    s2 = spawn("s2", client, group, topic, instance_id="inst-2", **opts)
    s3 = spawn("s3", client, group, topic, instance_id="inst-3", **opts)
    before = wait_stable([s1, s2, s3], 6, timeout=45)
    wait_consumed([s1, s2, s3], produced)

    def one_generation():
        gens = [m.generation() for m in (s1, s2, s3)]
        if None in gens or len({g for g, _ in gens}) != 1 or gens[0][0] <= 0:
            return None
        return gens[0][0]

    generation = wait_until(one_generation, 15, describe_all([s1, s2, s3]))
    old_member_id = s3.generation()[1]
    callbacks = {m.name: m.callbacks() for m in (s1, s2)}
    state, _, described = describe_group(client, server, group)
    assert state == "STABLE"
    assert {cid: inst for cid, (_, inst, _) in described.items()} == {"s1": "inst-1", "s2": "inst-2", "s3": "inst-3"}

    s3.kill()
    killed_at = time.monotonic()
    s3b = spawn("s3-again", client, group, topic, instance_id="inst-3", **opts)
    wait_until(lambda: s3b.assignment(), 9, describe_all([s1, s2, s3b]))
    assert time.monotonic() - killed_at < 10, "the restart did not fit in the session timeout"
    assert s3b.assignment() == before["s3"]
    wait_until(lambda: s3b.generation() and s3b.generation()[0] > 0, 5, s3b.describe)
    assert s3b.generation()[0] == generation, "the static member's return started a new generation"
    # The coordinator gave the returning instance a new member id (the old
    # one is fenced).
    assert s3b.generation()[1] != old_member_id

    # Past the killed process's session: nothing expires, nobody rebalances.
    produced |= produce(server, topic, 6, 20)
    time.sleep(max(0.0, killed_at + 12 - time.monotonic()))
    wait_consumed([s1, s2, s3, s3b], produced)
    for m in (s1, s2):
        assert m.generation()[0] == generation, m.describe()
        assert m.callbacks() == callbacks[m.name], m.describe()
        assert m.assignment() == before[m.name]
    assert s3b.generation()[0] == generation
    state, _, described = describe_group(client, server, group)
    assert state == "STABLE"
    assert {cid: inst for cid, (_, inst, _) in described.items()} == {"s1": "inst-1", "s2": "inst-2", "s3-again": "inst-3"}
    check_once_except_uncommitted_of([s1, s2, s3, s3b], produced, killed=[s3])


# ------------------------------------------------------ server kill -9


def commit_as_member(client, server, group, topic, partitions, offsets):
    """Joins `group`, commits `offsets` ({partition: offset}) synchronously
    and leaves."""
    deadline = time.monotonic() + 30
    if client == "confluent":
        c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": group, "enable.auto.commit": False})
        c.subscribe([topic])
        while len(c.assignment()) < partitions:
            assert time.monotonic() < deadline, f"assignment {c.assignment()}: {describe_group(client, server, group)}"
            c.poll(0.2)
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
        c.close()
        return
    from kafka import KafkaConsumer, OffsetAndMetadata
    from kafka import TopicPartition as KTP

    c = KafkaConsumer(bootstrap_servers=server.bootstrap, group_id=group, enable_auto_commit=False)
    c.subscribe([topic])
    c.partitions_for_topic(topic)  # see group_member.py: metadata before the first join
    while len(c.assignment() or ()) < partitions:
        assert time.monotonic() < deadline, f"assignment {c.assignment()}: {describe_group(client, server, group)}"
        c.poll(timeout_ms=200)
    c.commit({KTP(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    c.close(autocommit=False)


def consume_in_group(client, server, group, topic, count, timeout=30):
    """A new member of `group` reads until it has `count` messages (and a
    moment longer, to catch extra ones); returns their (partition, offset)."""
    got = []
    deadline = time.monotonic() + timeout
    settle = None
    if client == "confluent":
        c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": group, "enable.auto.commit": False})
        c.subscribe([topic])
        while time.monotonic() < (settle or deadline):
            m = c.poll(0.2)
            if m is not None:
                assert m.error() is None, m.error()
                got.append((m.partition(), m.offset()))
            if len(got) >= count and settle is None:
                settle = time.monotonic() + 1.0
        c.close()
        return got
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=server.bootstrap, group_id=group, enable_auto_commit=False)
    c.subscribe([topic])
    c.partitions_for_topic(topic)  # see group_member.py: metadata before the first join
    while time.monotonic() < (settle or deadline):
        for tp, records in c.poll(timeout_ms=200).items():
            got.extend((tp.partition, r.offset) for r in records)
        if len(got) >= count and settle is None:
            settle = time.monotonic() + 1.0
    c.close(autocommit=False)
    return got


@pytest.mark.restarts_server
@pytest.mark.kraft_only(
    "kafka-python 3.x's consumer raises ECONNREFUSED and dies while a 3-ZooKeeper "
    "+ 3-broker cluster restarts (slower than one KRaft node); confluent-kafka "
    "rides it out and runs in both modes",
    client="kafka-python",
)
@pytest.mark.parametrize("client", CLIENT_PARAMS)
def test_offsets_and_groups_survive_server_kill9(group_server, spawn, client):
    server = group_server
    topic = f"durable-{client}"
    closed, live = f"durable-closed-{client}", f"durable-live-{client}"
    create_topic(server, topic, 3)
    produced = produce(server, topic, 3, 100)
    committed = {0: 17, 1: 42, 2: 100}
    commit_as_member(client, server, closed, topic, 3, committed)
    member = spawn("live", client, live, topic)
    wait_committed([member], produced)

    server.kill9()
    server.restart()

    groups = wait_until(
        lambda: (lambda g: g if closed in g and live in g else None)(list_groups(client, server)),
        20,
        "both groups listed after the restart",
    )
    assert groups[closed] == "EMPTY"
    assert group_offsets(client, server, closed) == {(topic, p): o for p, o in committed.items()}
    assert group_offsets(client, server, live) == {(topic, p): 100 for p in range(3)}
    state, _, described = describe_group(client, server, closed)
    assert (state, described) == ("EMPTY", {})

    # A new member of the closed group resumes exactly at the committed offsets.
    expected = {(p, o) for p, o in produced if o >= committed[p]}
    got = consume_in_group(client, server, closed, topic, len(expected))
    assert sorted(got) == sorted(expected)
    first = {}
    for p, o in got:
        first.setdefault(p, o)
    assert first == {p: o for p, o in committed.items() if o < 100}

    # The member that lived through the restart goes on consuming and
    # committing in its group.
    produced |= produce(server, topic, 3, 10)
    wait_committed([member], produced, timeout=45)
    state, _, described = wait_until(
        lambda: (lambda d: d if d[0] == "STABLE" else None)(describe_group(client, server, live)),
        20,
        "the live group Stable again",
    )
    assert list(described) == ["live"]
    member.stop()


# ------------------------------------------------------------ lifecycle


@pytest.mark.server_settings("offsets.retention.minutes=1", "offsets.retention.check.interval.ms=1000")
def test_offsets_of_empty_groups_expire_after_retention_and_active_groups_keep_theirs(group_server, spawn):
    server = group_server
    topic = "retained"
    create_topic(server, topic, 2)
    produced = produce(server, topic, 2, 10)
    admin = AdminClient({"bootstrap.servers": server.bootstrap})

    # A group that never had members: its offsets count from the commit.
    # (The clocks start before the event, so they never run ahead of the
    # server's timestamps.)
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "retained-simple", "enable.auto.commit": False})
    committed_at = time.monotonic()
    c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 6)], asynchronous=False)
    c.close()
    # A group that keeps its member: nothing expires, however old the commit.
    active = spawn("active", "confluent", "retained-active", topic)
    # A group whose member leaves later: its offsets count from then.
    leaving = spawn("leaving", "confluent", "retained-leaving", topic)
    wait_committed([active], produced)
    wait_committed([leaving], produced)
    time.sleep(max(0.0, committed_at + 20 - time.monotonic()))
    emptied_at = time.monotonic()
    leaving.stop()
    ends = {(topic, 0): 10, (topic, 1): 10}
    assert group_offsets("confluent", server, "retained-simple") == {(topic, 0): 4, (topic, 1): 6}

    def groups():
        return {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result(15).valid}

    wait_until(lambda: "retained-simple" not in groups(), 90, lambda: f"retained-simple expired: {groups()}")
    took = time.monotonic() - committed_at
    assert took > 59, f"offsets expired {took:.1f}s after the commit, before the 1 minute retention"
    assert group_offsets("confluent", server, "retained-simple") == {}
    # The group emptied 20 s after its commit is still within its minute.
    assert group_offsets("confluent", server, "retained-leaving") == ends
    assert group_offsets("confluent", server, "retained-active") == ends

    wait_until(lambda: "retained-leaving" not in groups(), 40, lambda: f"retained-leaving expired: {groups()}")
    took = time.monotonic() - emptied_at
    assert took > 59, f"offsets expired {took:.1f}s after the group emptied, before the 1 minute retention"
    assert group_offsets("confluent", server, "retained-leaving") == {}
    assert group_offsets("confluent", server, "retained-active") == ends
    assert list_groups("confluent", server)["retained-active"] == "STABLE"
    active.stop()


# ---------------------------------------------------------------- admin


def alter_errors(admin, group, tps):
    """Alters offsets through confluent's AdminClient; returns
    {(topic, partition): error code or None}."""
    try:
        res = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)], request_timeout=10)[group].result(15)
    except KafkaException as e:
        return {(tp.topic, tp.partition): e.args[0].code() for tp in tps}
    return {(tp.topic, tp.partition): tp.error.code() if tp.error else None for tp in res.topic_partitions}


def error_code(future):
    with pytest.raises(KafkaException) as e:
        future.result(15)
    return e.value.args[0].code()


def test_confluent_admin_groups_and_errors(group_server, spawn):
    server = group_server
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    topic = group = "admin-confluent"
    create_topic(server, topic, 2)
    produced = produce(server, topic, 2, 10)
    active = spawn("active", "confluent", group, topic)
    wait_committed([active], produced)

    listing = admin.list_consumer_groups(request_timeout=10).result(15)
    assert listing.errors == []
    groups = {g.group_id: g for g in listing.valid}
    assert groups[group].state == ConsumerGroupState.STABLE
    assert not groups[group].is_simple_consumer_group
    stable = admin.list_consumer_groups(states={ConsumerGroupState.STABLE}, request_timeout=10).result(15)
    assert group in {g.group_id for g in stable.valid}
    empty = admin.list_consumer_groups(states={ConsumerGroupState.EMPTY}, request_timeout=10).result(15)
    assert group not in {g.group_id for g in empty.valid}

    d = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    assert d.state == ConsumerGroupState.STABLE
    assert d.partition_assignor == "range"  # the first of librdkafka's default "range,roundrobin"
    assert (d.coordinator.id, d.coordinator.port) in server.brokers
    assert not d.is_simple_consumer_group
    [m] = d.members
    assert m.client_id == "active" and m.group_instance_id is None
    assert {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions} == {(topic, 0), (topic, 1)}

    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=10)[group].result(15)
    assert {(tp.topic, tp.partition): tp.offset for tp in offsets.topic_partitions} == {(topic, 0): 10, (topic, 1): 10}
    # A partition with nothing committed answers "no offset".
    create_topic(server, "admin-confluent-other", 1)
    offsets = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 1), TopicPartition("admin-confluent-other", 0)])],
        request_timeout=10,
    )[group].result(15)
    assert {(tp.topic, tp.partition): tp.offset for tp in offsets.topic_partitions} == {
        (topic, 1): 10,
        ("admin-confluent-other", 0): -1001,  # OFFSET_INVALID
    }

    # A group with a member cannot be deleted, nor its offsets altered from
    # outside the generation (Kafka answers UNKNOWN_MEMBER_ID).
    assert error_code(admin.delete_consumer_groups([group], request_timeout=10)[group]) == KafkaError.NON_EMPTY_GROUP
    assert alter_errors(admin, group, [TopicPartition(topic, 0, 3)]) == {(topic, 0): KafkaError.UNKNOWN_MEMBER_ID}

    active.stop()
    d = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    assert d.state == ConsumerGroupState.EMPTY and d.members == []
    empty = admin.list_consumer_groups(states={ConsumerGroupState.EMPTY}, request_timeout=10).result(15)
    assert group in {g.group_id for g in empty.valid}

    assert alter_errors(admin, group, [TopicPartition(topic, 0, 3)]) == {(topic, 0): None}
    assert group_offsets("confluent", server, group) == {(topic, 0): 3, (topic, 1): 10}
    assert alter_errors(admin, group, [TopicPartition("admin-missing", 0, 3)]) == {
        ("admin-missing", 0): KafkaError.UNKNOWN_TOPIC_OR_PART
    }

    # A consumer that assigns partitions itself commits into a "simple" group;
    # a commit for a topic that does not exist fails for that partition.
    simple = "admin-confluent-simple"
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": simple, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 6)], asynchronous=False)
    try:
        result = c.commit(offsets=[TopicPartition("admin-missing", 0, 5)], asynchronous=False)
        codes = [tp.error.code() if tp.error else None for tp in result]
    except KafkaException as e:
        codes = [e.args[0].code()]
    c.close()
    assert codes == [KafkaError.UNKNOWN_TOPIC_OR_PART]
    assert group_offsets("confluent", server, simple) == {(topic, 0): 4, (topic, 1): 6}
    groups = {g.group_id: g for g in admin.list_consumer_groups(request_timeout=10).result(15).valid}
    assert groups[simple].is_simple_consumer_group
    assert groups[simple].state == ConsumerGroupState.EMPTY

    # (confluent-kafka's AdminClient has no delete_consumer_group_offsets in
    # 2.16; OffsetDelete is covered through kafka-python below.)
    futures = admin.delete_consumer_groups([group, simple], request_timeout=10)
    futures[group].result(15)
    futures[simple].result(15)
    remaining = {g.group_id for g in admin.list_consumer_groups(request_timeout=10).result(15).valid}
    assert group not in remaining and simple not in remaining
    assert group_offsets("confluent", server, group) == {}
    assert error_code(admin.delete_consumer_groups(["admin-never"], request_timeout=10)["admin-never"]) == KafkaError.GROUP_ID_NOT_FOUND


@kafka_python_3
def test_kafka_python_admin_groups_and_errors(group_server, spawn):
    import kafka.errors as Errors
    from kafka import OffsetAndMetadata
    from kafka import TopicPartition as KTP

    server = group_server
    admin = kp_admin(server)
    topic = group = "admin-kafka-python"
    create_topic(server, topic, 2)
    produced = produce(server, topic, 2, 10)
    active = spawn("active", "kafka-python", group, topic)
    wait_committed([active], produced)
    tp0, tp1 = KTP(topic, 0), KTP(topic, 1)

    listed = {g["group_id"]: g for g in admin.list_groups()}
    assert listed[group]["protocol_type"] == "consumer"
    assert listed[group].get("group_state", "Stable") == "Stable"
    state, protocol, members = describe_group("kafka-python", server, group)
    assert (state, protocol) == ("STABLE", "range")  # kafka-python's default prefers range
    assert list(members) == ["active"]
    assert members["active"][2] == {(topic, 0), (topic, 1)}
    offsets = admin.list_group_offsets([group])[group]
    assert {tp: om.offset for tp, om in offsets.items()} == {tp0: 10, tp1: 10}

    assert admin.delete_groups([group]) == {group: "NonEmptyGroupError"}
    # Offsets of a topic the group is subscribed to stay while it has members.
    assert admin.delete_group_offsets(group, [tp0]) == {tp0: Errors.GroupSubscribedToTopicError}
    assert admin.alter_group_offsets(group, {tp0: OffsetAndMetadata(3, "", -1)}) == {tp0: Errors.UnknownMemberIdError}

    active.stop()
    assert describe_group("kafka-python", server, group)[0] == "EMPTY"
    assert admin.alter_group_offsets(group, {tp0: OffsetAndMetadata(3, "", -1)}) == {tp0: Errors.NoError}
    missing = KTP("admin-kp-missing", 0)
    assert admin.alter_group_offsets(group, {missing: OffsetAndMetadata(3, "", -1)}) == {
        missing: Errors.UnknownTopicOrPartitionError
    }
    assert {tp: om.offset for tp, om in admin.list_group_offsets([group])[group].items()} == {tp0: 3, tp1: 10}

    assert admin.delete_group_offsets(group, [tp0]) == {tp0: Errors.NoError}
    assert {tp: om.offset for tp, om in admin.list_group_offsets([group])[group].items() if om.offset >= 0} == {tp1: 10}

    assert admin.delete_groups([group]) == {group: "OK"}
    assert group not in {g["group_id"] for g in admin.list_groups()}
    assert admin.delete_groups(["admin-kp-never"]) == {"admin-kp-never": "GroupIdNotFoundError"}
    with pytest.raises(Errors.GroupIdNotFoundError):
        admin.delete_group_offsets("admin-kp-never", [tp0])
    admin.close()


# ------------------------------------------- the coordinator on the wire


@kafka_python_3
def test_coordinator_answers_on_the_wire(group_server):
    from kafka.protocol.consumer import (
        HeartbeatRequest,
        JoinGroupRequest,
        LeaveGroupRequest,
        OffsetCommitRequest,
        OffsetFetchRequest,
        SyncGroupRequest,
    )
    from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription
    from kafka.protocol.metadata.find_coordinator import FindCoordinatorRequest

    server = group_server
    topic, group = "wire", "wire-group"
    create_topic(server, topic, 2)
    NONE, UNKNOWN_TOPIC, ILLEGAL_GENERATION, UNKNOWN_MEMBER = 0, 3, 22, 25
    REBALANCE_IN_PROGRESS, MEMBER_ID_REQUIRED = 27, 79

    # Broker 1 names the coordinator (itself, on one KRaft server; any of
    # the three in ZK mode), and both connections go there.
    first = Wire(server.port)
    fc = first.call(FindCoordinatorRequest(key=group, key_type=0, coordinator_keys=[group]))
    coordinator = fc.coordinators[0] if getattr(fc, "coordinators", None) else fc
    assert coordinator.error_code == 0
    assert (coordinator.node_id, coordinator.port) in server.brokers
    a, b = first if coordinator.port == server.port else Wire(coordinator.port), Wire(coordinator.port)

    subscription = ConsumerProtocolSubscription(version=0, topics=[topic], user_data=None).encode()

    def join(conn, member_id):
        return conn.send(JoinGroupRequest(
            group_id=group, session_timeout_ms=10000, rebalance_timeout_ms=10000, member_id=member_id,
            group_instance_id=None, protocol_type="consumer",
            protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=subscription)],
        ))

    def sync(conn, generation, member_id, assignments):
        return conn.send(SyncGroupRequest(
            group_id=group, generation_id=generation, member_id=member_id, group_instance_id=None,
            protocol_type="consumer", protocol_name="range",
            assignments=[SyncGroupRequest.SyncGroupRequestAssignment(member_id=m, assignment=x) for m, x in assignments.items()],
        ))

    def heartbeat(generation, member_id):
        return a.call(HeartbeatRequest(group_id=group, generation_id=generation, member_id=member_id, group_instance_id=None)).error_code

    def commit(generation, member_id, offset, name=topic, partition=0):
        Topic = OffsetCommitRequest.OffsetCommitRequestTopic
        r = a.call(OffsetCommitRequest(
            group_id=group, generation_id_or_member_epoch=generation, member_id=member_id, group_instance_id=None,
            topics=[Topic(name=name, partitions=[Topic.OffsetCommitRequestPartition(
                partition_index=partition, committed_offset=offset, committed_metadata="")])],
        ))
        [t] = r.topics
        [p] = t.partitions
        return p.error_code

    def assignment(partitions):
        return ConsumerProtocolAssignment(
            version=0, assigned_partitions=[ConsumerProtocolAssignment.TopicPartition(topic=topic, partitions=partitions)],
            user_data=None,
        ).encode()

    # JoinGroup v4+ without a member id: the coordinator hands one out first.
    r = a.receive(join(a, ""))
    assert r.error_code == MEMBER_ID_REQUIRED and r.member_id
    member_a = r.member_id
    r = a.receive(join(a, member_a))
    assert r.error_code == NONE
    assert (r.member_id, r.leader, r.protocol_name) == (member_a, member_a, "range")
    assert [m.member_id for m in r.members] == [member_a]
    assert r.members[0].metadata == subscription
    gen1 = r.generation_id
    assert gen1 >= 1
    r = a.receive(sync(a, gen1, member_a, {member_a: assignment([0, 1])}))
    assert (r.error_code, r.assignment) == (NONE, assignment([0, 1]))

    assert heartbeat(gen1, member_a) == NONE
    assert commit(gen1, member_a, 5) == NONE
    assert commit(gen1 + 1, member_a, 6) == ILLEGAL_GENERATION
    assert commit(gen1 - 1, member_a, 6) == ILLEGAL_GENERATION
    assert commit(gen1, "nobody", 6) == UNKNOWN_MEMBER
    assert commit(gen1, member_a, 6, name="wire-missing") == UNKNOWN_TOPIC
    assert commit(gen1, member_a, 6, partition=7) == UNKNOWN_TOPIC
    assert heartbeat(gen1, "nobody") == UNKNOWN_MEMBER
    assert heartbeat(gen1 + 5, member_a) == ILLEGAL_GENERATION

    # A second member: the group prepares a rebalance; B's join waits for A.
    r = b.receive(join(b, ""))
    assert r.error_code == MEMBER_ID_REQUIRED
    member_b = r.member_id
    assert member_b and member_b != member_a
    pending_b = join(b, member_b)
    wait_until(lambda: heartbeat(gen1, member_a) == REBALANCE_IN_PROGRESS, 5, "heartbeat answered REBALANCE_IN_PROGRESS")
    # Commits of the current generation are still taken while preparing
    # (members commit in their revoke callbacks).
    assert commit(gen1, member_a, 7) == NONE

    r = a.receive(join(a, member_a))
    assert r.error_code == NONE
    gen2 = r.generation_id
    assert gen2 == gen1 + 1
    assert r.leader == member_a
    assert sorted(m.member_id for m in r.members) == sorted([member_a, member_b])
    rb = b.receive(pending_b)
    assert (rb.error_code, rb.generation_id, rb.leader, rb.member_id) == (NONE, gen2, member_a, member_b)
    assert rb.members == []

    # Joined but not yet synced: commits are answered REBALANCE_IN_PROGRESS,
    # and the old generation is gone.
    assert commit(gen2, member_a, 8) == REBALANCE_IN_PROGRESS
    assert commit(gen1, member_a, 8) == ILLEGAL_GENERATION

    pending_sync_b = sync(b, gen2, member_b, {})
    r = a.receive(sync(a, gen2, member_a, {member_a: assignment([0]), member_b: assignment([1])}))
    assert (r.error_code, r.assignment) == (NONE, assignment([0]))
    r = b.receive(pending_sync_b)
    assert (r.error_code, r.assignment) == (NONE, assignment([1]))

    assert commit(gen1, member_a, 9) == ILLEGAL_GENERATION
    assert heartbeat(gen1, member_a) == ILLEGAL_GENERATION
    assert heartbeat(gen2, member_a) == NONE
    assert commit(gen2, member_a, 9) == NONE

    r = a.call(OffsetFetchRequest(group_id=group, topics=[OffsetFetchRequest.OffsetFetchRequestTopic(name=topic, partition_indexes=[0, 1])],
                                  groups=[OffsetFetchRequest.OffsetFetchRequestGroup(group_id=group, topics=[
                                      OffsetFetchRequest.OffsetFetchRequestGroup.OffsetFetchRequestTopics(name=topic, partition_indexes=[0, 1])])]))
    topics = r.groups[0].topics if r.API_VERSION >= 8 else r.topics
    fetched = {p.partition_index: (p.committed_offset, p.error_code) for t in topics for p in t.partitions}
    assert fetched == {0: (9, NONE), 1: (-1, NONE)}

    # B leaves: A is told to rejoin. A leaves: the group is empty, and then
    # takes commits from outside any generation (as the admin client sends).
    def leave(conn, member_id):
        version = min(LeaveGroupRequest.max_version, conn.versions[LeaveGroupRequest.API_KEY])
        if version >= 3:
            r = conn.call(LeaveGroupRequest(group_id=group, members=[LeaveGroupRequest.MemberIdentity(member_id=member_id, group_instance_id=None)]))
            assert [m.error_code for m in r.members] == [NONE]
        else:
            r = conn.call(LeaveGroupRequest(group_id=group, member_id=member_id))
        return r.error_code

    assert leave(b, member_b) == NONE
    assert heartbeat(gen2, member_a) == REBALANCE_IN_PROGRESS
    assert leave(a, member_a) == NONE
    assert heartbeat(gen2, member_a) == UNKNOWN_MEMBER
    assert commit(-1, "", 11) == NONE
    a.close()
    b.close()
