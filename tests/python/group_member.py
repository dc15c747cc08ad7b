"""One consumer-group member, run as its own process by test_groups.py.

It subscribes to one topic and loops: take a batch, write a `consumed P O`
line per message (flushed to the file before anything else happens), sleep
--process-delay seconds ("processing"), commit the next offsets
synchronously, then write `committed P O` (or `commitfail P O error`).
Lines about the group:

    started
    assignment P,P,...    the client's assignment() whenever it changes
    assign P,... / revoke P,... / lost P,...    rebalance callbacks
    generation G M        group generation and member id whenever they change
    committime MS         how long the synchronous commit took
    stalled               after SIGUSR1: from then on the member stops
                          polling (a stuck application) until SIGTERM
    closed                after a clean close (SIGTERM)

Every line is flushed as soon as it is written, so a SIGKILL loses nothing
that was written. Options only change client defaults when given.
"""

import argparse
import os
import signal
import struct
import sys
import threading
import time

stop = False
stall = False


def on_sigterm(_sig, _frame):
    global stop
    stop = True


def on_sigusr1(_sig, _frame):
    global stall
    stall = True


class Out:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, *lines):
        with self.lock:
            for line in lines:
                self.f.write(line + "\n")
            self.f.flush()


def parts(partitions):
    return ",".join(str(p) for p in sorted(partitions))


def run_confluent(args, out):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        # The member commits itself, synchronously, after each batch.
        "enable.auto.commit": False,
        # Messages produced before the group's first commit must be read too.
        "auto.offset.reset": "earliest",
    }
    if args.client_id:
        conf["client.id"] = args.client_id
    if args.assignor:
        conf["partition.assignment.strategy"] = args.assignor
    if args.instance_id:
        conf["group.instance.id"] = args.instance_id
    if args.session_timeout_ms:
        conf["session.timeout.ms"] = args.session_timeout_ms
    if args.heartbeat_interval_ms:
        conf["heartbeat.interval.ms"] = args.heartbeat_interval_ms
    if args.max_poll_interval_ms:
        conf["max.poll.interval.ms"] = args.max_poll_interval_ms
    if os.environ.get("GROUP_MEMBER_DEBUG"):
        conf["debug"] = "cgrp,protocol"
    consumer = Consumer(conf)

    def cb(kind):
        def f(_consumer, partitions):
            out.write(f"{kind} {parts(tp.partition for tp in partitions)}")
        return f

    consumer.subscribe([args.topic], on_assign=cb("assign"), on_revoke=cb("revoke"), on_lost=cb("lost"))

    def generation():
        # librdkafka's serialized group metadata: "CGMDv2:", the generation
        # id (host byte order), then NUL-terminated group id and member id.
        raw = consumer.consumer_group_metadata()
        if not isinstance(raw, bytes) or not raw.startswith(b"CGMDv2:"):
            return None
        gen = struct.unpack("=i", raw[7:11])[0]
        member = raw[11:].split(b"\0")[1].decode()
        return gen, member

    def commit(offsets):
        tps = [TopicPartition(args.topic, p, o) for p, o in sorted(offsets.items())]
        try:
            result = consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as e:
            out.write(*(f"commitfail {tp.partition} {tp.offset} {e.args[0].name()}" for tp in tps))
            return
        lines = []
        for tp in result:
            if tp.error is not None:
                lines.append(f"commitfail {tp.partition} {tp.offset} {tp.error.name()}")
            else:
                lines.append(f"committed {tp.partition} {tp.offset}")
        out.write(*lines)

    def batch():
        msgs = consumer.consume(num_messages=args.batch, timeout=0.2)
        got = []
        for m in msgs:
            if m.error() is not None:
                out.write(f"error {m.error().name()}")
                continue
            got.append((m.partition(), m.offset()))
        return got

    def assignment():
        return {tp.partition for tp in consumer.assignment()}

    loop(args, out, batch, commit, assignment, generation)
    consumer.close()


def run_kafka_python(args, out):
    from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

    assignors = {
        "range": RangePartitionAssignor,
        "roundrobin": RoundRobinPartitionAssignor,
        "sticky": StickyPartitionAssignor,
    }
    try:
        from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

        assignors["cooperative-sticky"] = CooperativeStickyAssignor
    except ImportError:
        pass

    conf = dict(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        # The member commits itself, synchronously, after each batch.
        enable_auto_commit=False,
        # Messages produced before the group's first commit must be read too.
        auto_offset_reset="earliest",
    )
    if args.client_id:
        conf["client_id"] = args.client_id
    if args.assignor:
        conf["partition_assignment_strategy"] = [assignors[a] for a in args.assignor.split(",")]
    if args.instance_id:
        conf["group_instance_id"] = args.instance_id
    if args.session_timeout_ms:
        conf["session_timeout_ms"] = args.session_timeout_ms
    if args.heartbeat_interval_ms:
        conf["heartbeat_interval_ms"] = args.heartbeat_interval_ms
    if args.max_poll_interval_ms:
        conf["max_poll_interval_ms"] = args.max_poll_interval_ms
    consumer = KafkaConsumer(**conf)
    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            out.write(f"revoke {parts(tp.partition for tp in revoked)}")

        def on_partitions_assigned(self, assigned):
            out.write(f"assign {parts(tp.partition for tp in assigned)}")

        def on_partitions_lost(self, lost):
            out.write(f"lost {parts(tp.partition for tp in lost)}")

    consumer.subscribe([args.topic], listener=Listener())
    # Learn the topic's partitions before the first join (poll). Otherwise
    # kafka-python 3.0.12's leader assigns nothing, rejoins when the metadata
    # arrives, and if that join outlasts one poll() it never applies the
    # assignment the coordinator then sends: it stays a member, holding
    # partitions nobody reads.
    consumer.partitions_for_topic(args.topic)

    def generation():
        md = consumer.group_metadata()
        return md.generation_id, md.member_id

    def commit(offsets):
        request = {TopicPartition(args.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        try:
            consumer.commit(request)
        except Exception as e:  # any commit failure is reported, not fatal
            out.write(*(f"commitfail {p} {o} {type(e).__name__}" for p, o in sorted(offsets.items())))
            return
        out.write(*(f"committed {p} {o}" for p, o in sorted(offsets.items())))

    def batch():
        got = []
        for tp, records in consumer.poll(timeout_ms=200, max_records=args.batch).items():
            got.extend((tp.partition, r.offset) for r in records)
        return got

    def assignment():
        return {tp.partition for tp in (consumer.assignment() or ())}

    loop(args, out, batch, commit, assignment, generation)
    consumer.close(autocommit=False)


def loop(args, out, batch, commit, assignment, generation):
    last_assignment = None
    last_generation = None
    stall_reported = False
    while not stop:
        if stall:
            if not stall_reported:
                out.write("stalled")
                stall_reported = True
            # The client's own threads go on (heartbeats); the application
            # no longer polls.
            time.sleep(0.1)
            continue
        got = batch()
        now = assignment()
        if now != last_assignment:
            out.write(f"assignment {parts(now)}")
            last_assignment = now
        gen = generation()
        if gen != last_generation and gen is not None:
            out.write(f"generation {gen[0]} {gen[1]}")
            last_generation = gen
        if not got:
            continue
        out.write(*(f"consumed {p} {o}" for p, o in got))
        if args.process_delay:
            time.sleep(args.process_delay)
        offsets = {}
        for p, o in got:
            offsets[p] = max(offsets.get(p, 0), o + 1)
        started = time.monotonic()
        commit(offsets)
        out.write(f"committime {(time.monotonic() - started) * 1000:.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=["confluent", "kafka-python"], required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--client-id")
    ap.add_argument("--assignor")
    ap.add_argument("--instance-id")
    ap.add_argument("--session-timeout-ms", type=int)
    ap.add_argument("--heartbeat-interval-ms", type=int)
    ap.add_argument("--max-poll-interval-ms", type=int)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--process-delay", type=float, default=0.0)
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGUSR1, on_sigusr1)
    if os.environ.get("GROUP_MEMBER_DEBUG"):
        # Client debug logs on stderr, for chasing a failure by hand.
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(threadName)s %(name)s %(message)s")
    out = Out(args.out)
    out.write(f"started {os.getpid()}")
    if args.client == "confluent":
        run_confluent(args, out)
    else:
        run_kafka_python(args, out)
    out.write("closed")


if __name__ == "__main__":
    sys.exit(main())
