//! Test harness: real `sluice server` processes on 127.0.0.1 with free
//! ports and data in a temp dir, stopped (or killed) by the test.

#![allow(dead_code)]

pub mod acked;
pub mod cluster;
pub mod netns;
pub mod zk;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

pub struct Server {
    child: Option<Child>,
    pub data: PathBuf,
    /// Owns the temp dir so it lives as long as the server.
    _dir: Option<tempfile::TempDir>,
    pub port: u16,
    pub metrics_port: u16,
    extra: Vec<String>,
    /// (soft, hard) RLIMIT_NOFILE for the next start, if set.
    open_file_limit: Option<(u64, u64)>,
}

/// A port free right now (the server binds it a moment later), from
/// 10000..20000: below Linux's ephemeral range (32768 and up), because a
/// restarted node binds its old port again and an ephemeral port may by then
/// be the source port of some outgoing connection. Each test process starts
/// at its own offset so that test binaries running side by side rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = std::process::id().wrapping_mul(157) % COUNT;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `key=value` settings.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let mut server = Server {
            child: None,
            data,
            _dir: Some(dir),
            port: free_port(),
            metrics_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            open_file_limit: None,
        };
        server.launch(server.port);
        server
    }

    fn launch(&mut self, port: u16) {
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .arg("--set")
            .arg(format!("listeners=PLAINTEXT://127.0.0.1:{port}"))
            .arg("--set")
            .arg(format!("log.dirs={}", self.data.display()))
            .arg("--set")
            .arg(format!("metrics.listen=127.0.0.1:{}", self.metrics_port));
        for e in &self.extra {
            cmd.arg("--set").arg(e);
        }
        if let Some((soft, hard)) = self.open_file_limit {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only `limit`.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log file");
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning sluice server");
        let lines = stdout_lines(&mut child);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let port = loop {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = lines.recv_timeout(wait) else {
                break None;
            };
            if let Some(rest) = line.split("serving Kafka on ").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .and_then(|addr| addr.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok());
            }
        };
        match port {
            Some(p) => self.port = p,
            _ => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", self.log());
            }
        }
        self.child = Some(child);
    }

    pub fn log_path(&self) -> PathBuf {
        self.data
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// kill -9, no chance to flush or checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The (soft, hard) open-file limit the server gets from its next start on
    /// (lowering a hard limit needs no privilege; raising it needs root).
    pub fn set_open_file_limit(&mut self, soft: u64, hard: u64) {
        self.open_file_limit = Some((soft, hard));
    }

    /// The hard open-file limit this test process has.
    pub fn hard_open_file_limit() -> u64 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct given.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        assert!(ok, "getrlimit failed");
        limit.rlim_max
    }

    /// Starts again on the same data directory and port.
    pub fn restart(&mut self) {
        let port = self.port;
        self.launch(port);
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs the sluice CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("topics")
            .arg("--bootstrap-server")
            .arg(self.bootstrap())
            .args(args)
            .output()
            .expect("running sluice topics")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Spawns `command` (a `sluice cluster up ...`) with its output piped and
/// waits, within `limit`, until it prints that the cluster is up. Returns
/// the process and what it printed; on failure, panics with that and the
/// nodes' logs in `dir`.
pub fn start_cluster_up(mut command: Command, dir: &Path, limit: Duration) -> (Child, String) {
    let errors = dir.join("cluster-up.stderr.log");
    let mut up = command
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors).expect("creating the stderr file"))
        .spawn()
        .expect("starting cluster up");
    let rx = stdout_lines(&mut up);
    let mut printed = String::new();
    let deadline = std::time::Instant::now() + limit;
    while !printed.contains("The cluster is up") {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|_| {
                let logs = logs_in(dir);
                panic!("cluster up did not start:\n{printed}\n{logs}")
            });
        printed.push_str(&line);
        printed.push('\n');
    }
    (up, printed)
}

/// Every `.log` file in `dir`, each under its path: what a failing test
/// prints to show what its nodes did.
pub fn logs_in(dir: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            format!("===== {}\n{text}", path.display())
        })
        .collect()
}

/// Waits for `child` to exit, within `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    exit_within(child, limit).unwrap_or_else(|| panic!("the process did not stop within {limit:?}"))
}

/// `child`'s exit status once it exits, or `None` if it is still running
/// after `limit`.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the process") {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines `child` prints on its piped stdout, read on a thread of their
/// own (which keeps draining the pipe after the receiver is dropped).
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}
