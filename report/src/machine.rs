//! The machine the experiment ran on, printed in the report so numbers from
//! different machines are not compared by mistake.

use std::fs;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may use; 0 if unknown.
    pub cores: usize,
    /// Total memory; 0 if unknown.
    pub memory_bytes: u64,
    /// E.g. "Debian GNU/Linux 12 (bookworm)"; "unknown" if unknown.
    pub os: String,
    /// Kernel release, e.g. "6.1.0-18-amd64"; "unknown" if unknown.
    pub kernel: String,
}

const UNKNOWN: &str = "unknown";

impl Machine {
    /// Reads what it can from the running system. Never fails: what cannot
    /// be read is 0 or "unknown".
    pub fn detect() -> Machine {
        let read = |path: &str| fs::read_to_string(path).ok();
        Machine {
            // Respects CPU affinity and cgroup quotas, which is what the
            // cluster under test actually got.
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes: read("/proc/meminfo")
                .and_then(|text| mem_total_bytes(&text))
                .unwrap_or(0),
            os: read("/etc/os-release")
                .and_then(|text| pretty_name(&text))
                .unwrap_or_else(|| UNKNOWN.to_owned()),
            kernel: read("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty())
                .unwrap_or_else(|| UNKNOWN.to_owned()),
        }
    }
}

/// `MemTotal:  16318412 kB` from /proc/meminfo, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let rest = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = rest.split_whitespace();
    let amount: u64 = words.next()?.parse().ok()?;
    let multiplier = match words.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    amount.checked_mul(multiplier)
}

/// PRETTY_NAME from /etc/os-release (falling back to NAME), unquoted.
fn pretty_name(os_release: &str) -> Option<String> {
    let value = |key: &str| {
        os_release.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(key)?.strip_prefix('=')?;
            let unquoted = rest
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .or_else(|| rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
                .unwrap_or(rest);
            Some(unquoted.trim().to_owned()).filter(|v| !v.is_empty())
        })
    };
    value("PRETTY_NAME").or_else(|| value("NAME"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let meminfo = "MemTotal:       16318412 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(16_318_412 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn reads_pretty_name() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(pretty_name("PRETTY_NAME_X=1\n"), None);
        assert_eq!(pretty_name(""), None);
    }

    #[test]
    fn detect_does_not_panic_and_fills_in_something() {
        let machine = Machine::detect();
        assert!(!machine.os.is_empty());
        assert!(!machine.kernel.is_empty());
    }
}
