//! Hosts with their own addresses on one machine: a Linux network
//! namespace per node, each joined to a bridge in the test's namespace by a
//! veth pair. Cutting a node off is taking its veth down; healing, bringing
//! it up. Needs root and iproute2.

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// Networks are named and addressed after the process id, and a cluster
/// per test is all two cores take: tests of one binary that use a network
/// run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Network {
    tag: String,
    subnet: String,
    hosts: usize,
    /// Held until the network is gone (dropped after `drop` removes it).
    _turn: MutexGuard<'static, ()>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Inserts (`-I`) or deletes (`-D`) the rule accepting forwarding within `bridge`.
fn iptables(action: &str, bridge: &str) -> Result<(), String> {
    let out = Command::new("iptables")
        .args([
            action, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
        ])
        .output()
        .map_err(|e| format!("running iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Network {
    /// A bridge and `hosts` namespaces on a /24 of 10.200.0.0/16 chosen from
    /// the process id, so concurrent runs do not collide. Fails (with the
    /// reason) where namespaces cannot be made, e.g. without root.
    pub fn new(hosts: usize) -> Result<Self, String> {
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        let subnet = format!("10.200.{}", pid % 250 + 1);
        // A test that failed while holding the turn poisons it; the
        // network it left was removed all the same.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let net = Network {
            tag,
            subnet,
            hosts: 0,
            _turn: turn,
        };
        let bridge = net.bridge();
        let _ = ip(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        // Where Docker runs, bridged traffic goes through iptables' FORWARD
        // chain, whose policy drops it: let this bridge's own traffic pass.
        iptables("-I", &bridge)?;
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", net.subnet),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        let mut net = net;
        for i in 0..hosts {
            let ns = net.namespace(i);
            let veth = net.veth(i);
            let _ = ip(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.address(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            net.hosts = i + 1;
        }
        Ok(net)
    }

    /// [`Network::new`] for a test that needs it: where namespaces cannot
    /// be made (not root, no iproute2 or iptables) the test fails with the
    /// reason. It never passes without having run.
    pub fn for_test(hosts: usize) -> Self {
        Self::new(hosts).unwrap_or_else(|e| {
            panic!(
                "this test runs nodes in Linux network namespaces, which needs root, \
                 iproute2 and iptables (CI runs it as root); it cannot run here: {e}"
            )
        })
    }

    fn bridge(&self) -> String {
        format!("slb{}", self.tag)
    }

    fn veth(&self, host: usize) -> String {
        format!("slv{}h{host}", self.tag)
    }

    pub fn namespace(&self, host: usize) -> String {
        format!("sluice-{}-{host}", self.tag)
    }

    /// The address of host `host` (reachable from the test's namespace).
    pub fn address(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, 10 + host)
    }

    /// Cuts host `host` off from every other host and from the test.
    pub fn cut(&self, host: usize) {
        ip(&["link", "set", &self.veth(host), "down"]).expect("cutting a host off");
    }

    pub fn heal(&self, host: usize) {
        ip(&["link", "set", &self.veth(host), "up"]).expect("reconnecting a host");
    }
}

impl Network {
    /// Drops all traffic between hosts `a` and `b`; each still reaches
    /// every other host and the test (a partial partition).
    pub fn cut_between(&self, a: usize, b: usize) {
        self.filter(a, b, "-I").expect("cutting two hosts apart");
    }

    pub fn heal_between(&self, a: usize, b: usize) {
        self.filter(a, b, "-D").expect("reconnecting two hosts");
    }

    /// Inserts (`-I`) or deletes (`-D`), in host `a`'s namespace, the rules
    /// dropping what it exchanges with host `b`.
    fn filter(&self, a: usize, b: usize, action: &str) -> Result<(), String> {
        let peer = self.address(b);
        for (chain, side) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.namespace(a), "iptables", action])
                .args([chain, side, &peer, "-j", "DROP"])
                .output()
                .map_err(|e| format!("running iptables: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "iptables {action} {chain} in host {a}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    /// The hosts host `from` has an established TCP connection to, on `port`.
    pub fn connected_hosts(&self, from: usize, port: u16) -> Vec<usize> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.namespace(from), "ss", "-Htn"])
            .arg(format!("dport = :{port}"))
            .output()
            .expect("running ss");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut hosts: Vec<usize> = (0..self.hosts)
            .filter(|&h| {
                let peer = format!("{}:{port}", self.address(h));
                text.lines()
                    .any(|line| line.starts_with("ESTAB") && line.contains(&peer))
            })
            .collect();
        hosts.dedup();
        hosts
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["link", "del", &self.veth(i)]);
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = iptables("-D", &self.bridge());
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
