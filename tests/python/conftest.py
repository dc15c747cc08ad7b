"""Starts real `sluice server` processes for the Python client tests."""

import os
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

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Fixtures look at the outcome to print what helps after a failure.
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def failed(request):
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


def run_server(request, extra=()):
    s = Server(extra=extra)
    yield s
    if failed(request):
        print(f"--- tail of {s.log_path} ---\n{s.log_tail()}")
    s.kill9()
    s.dir.cleanup()


@pytest.fixture
def server(request):
    yield from run_server(request)


@pytest.fixture
def group_server(request):
    # Kafka delays a new group's first rebalance by 3 s to gather members;
    # the tests skip that wait. A test adds settings of its own with
    # @pytest.mark.server_settings("key=value", ...).
    marker = request.node.get_closest_marker("server_settings")
    extra = ["group.initial.rebalance.delay.ms=0", *(marker.args if marker else ())]
    yield from run_server(request, extra=extra)


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s")
