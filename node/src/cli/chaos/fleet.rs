//! The nodes under test: real `testmesh node` processes, each on loopback or in its own network
//! namespace (macvlan links on one veth, so that traffic between them is switched without the
//! host's firewall), and the faults applied to them: signals, iptables drops inside a
//! namespace, and a token-bucket rate limit for a slow link.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

pub struct Node {
    pub dir: PathBuf,
    pub ip: String,
    pub http_port: u16,
    pub mesh_port: u16,
    pub child: Option<Child>,
    pub paused: bool,
    pub token: String,
    pub id: String,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.http_port)
    }

    pub fn mesh_addr(&self) -> String {
        format!("/ip4/{}/tcp/{}", self.ip, self.mesh_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn up(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// Network namespaces, one per node: `{prefix}n{i}` with address `{net}.{i+1}`; this host
/// reaches them at `{net}.254`.
pub struct Netns {
    prefix: String,
    net: String,
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates the namespaces (needs root and iproute2).
    pub fn create(n: usize) -> anyhow::Result<Netns> {
        let pid = std::process::id();
        let prefix = format!("tmc{:x}", pid & 0xfffff);
        let net = format!("10.231.{}", pid % 250);
        let ns = Netns { prefix, net };
        let (parent, peer) = (format!("{}p", ns.prefix), format!("{}q", ns.prefix));
        sh(&[
            "ip", "link", "add", &parent, "type", "veth", "peer", "name", &peer,
        ])
        .context("network namespaces need root and iproute2 (or run without --netns)")?;
        sh(&["ip", "link", "set", &parent, "up"])?;
        sh(&["ip", "link", "set", &peer, "up"])?;
        let host = format!("{}h", ns.prefix);
        sh(&[
            "ip", "link", "add", "link", &parent, "name", &host, "type", "macvlan", "mode",
            "bridge",
        ])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}.254/24", ns.net),
            "dev",
            &host,
        ])?;
        sh(&["ip", "link", "set", &host, "up"])?;
        for i in 0..n {
            let name = ns.name(i);
            let link = format!("{}v{i}", ns.prefix);
            sh(&["ip", "netns", "add", &name])?;
            sh(&[
                "ip", "link", "add", "link", &parent, "name", &link, "type", "macvlan", "mode",
                "bridge",
            ])?;
            sh(&["ip", "link", "set", &link, "netns", &name])?;
            sh(&["ip", "-n", &name, "link", "set", &link, "name", "eth0"])?;
            sh(&[
                "ip",
                "-n",
                &name,
                "addr",
                "add",
                &format!("{}/24", ns.ip(i)),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &name, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    pub fn name(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.net, i + 1)
    }

    fn in_ns(&self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        let name = self.name(i);
        let mut all = vec!["ip", "netns", "exec", &name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Drops all traffic between nodes `a` and `b` (both directions, both ends).
    pub fn cut(&self, a: usize, b: usize) -> anyhow::Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let ip = self.ip(to);
            self.in_ns(from, &["iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
            self.in_ns(from, &["iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Limits node `i`'s link to 2 Mbit/s each way: its own sends with a token bucket, and
    /// what each of the `n` nodes sends to it with an HTB class that iptables picks by
    /// destination (this kernel has neither netem nor tc classifiers).
    pub fn slow(&self, i: usize, n: usize) -> anyhow::Result<()> {
        let tc = |j: usize, args: &str| {
            let mut all = vec!["tc"];
            all.extend(args.split(' '));
            self.in_ns(j, &all)
        };
        tc(
            i,
            "qdisc add dev eth0 root tbf rate 2mbit burst 16kb latency 2s",
        )?;
        let dst = self.ip(i);
        for j in (0..n).filter(|j| *j != i) {
            tc(j, "qdisc add dev eth0 root handle 1: htb default 10")?;
            tc(
                j,
                "class add dev eth0 parent 1: classid 1:10 htb rate 10gbit",
            )?;
            tc(
                j,
                "class add dev eth0 parent 1: classid 1:20 htb rate 2mbit",
            )?;
            self.in_ns(
                j,
                &[
                    "iptables",
                    "-t",
                    "mangle",
                    "-A",
                    "POSTROUTING",
                    "-d",
                    &dst,
                    "-j",
                    "CLASSIFY",
                    "--set-class",
                    "1:20",
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every cut and rate limit.
    pub fn heal(&self, n: usize) -> anyhow::Result<()> {
        for i in 0..n {
            self.in_ns(i, &["iptables", "-F"])?;
            self.in_ns(i, &["iptables", "-t", "mangle", "-F"])?;
            let _ = self.in_ns(i, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }

    pub fn destroy(&self, n: usize) {
        for i in 0..n {
            let _ = sh(&["ip", "netns", "del", &self.name(i)]);
        }
        let _ = sh(&["ip", "link", "del", &format!("{}h", self.prefix)]);
        let _ = sh(&["ip", "link", "del", &format!("{}p", self.prefix)]);
    }
}

pub struct Fleet {
    pub nodes: Vec<Node>,
    pub net: Option<Netns>,
    bin: PathBuf,
    key: PathBuf,
    extra: Vec<String>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Fleet {
    /// Prepares `n` nodes under `dir` (not started). `extra` goes to every `testmesh node`.
    pub fn new(
        dir: &Path,
        n: usize,
        netns: bool,
        extra: Vec<String>,
        bin: Option<PathBuf>,
    ) -> anyhow::Result<Fleet> {
        let net = if netns { Some(Netns::create(n)?) } else { None };
        let mut nodes = Vec::new();
        for i in 0..n {
            let d = dir.join(format!("node{i}"));
            std::fs::create_dir_all(d.join("data"))?;
            let (ip, http_port, mesh_port) = match &net {
                Some(ns) => (ns.ip(i), 7070, 7071),
                None => ("127.0.0.1".to_string(), free_port()?, free_port()?),
            };
            nodes.push(Node {
                dir: d,
                ip,
                http_port,
                mesh_port,
                child: None,
                paused: false,
                token: String::new(),
                id: String::new(),
            });
        }
        let key = dir.join("swarm.key");
        let bin = match bin {
            Some(b) => b.canonicalize().context("--node-bin")?,
            None => std::env::current_exe().context("finding the testmesh binary")?,
        };
        std::fs::write(&key, crate::mesh::key::generate_swarm_key())?;
        Ok(Fleet {
            nodes,
            net,
            bin,
            key,
            extra,
        })
    }

    /// Starts node `i` on its data dir (the same one after a kill).
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let join = self.nodes[0].mesh_addr();
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("node.log"))?;
        let mut cmd = match &self.net {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name(i)]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("node")
            .arg("--data-dir")
            .arg(n.data_dir())
            .args(["--http", &format!("{}:{}", n.ip, n.http_port)])
            // The harness's own nodes on private addresses (its namespaces or loopback): plain
            // HTTP keeps its client simple; TLS is tested on its own (tests/tls.rs).
            .arg("--insecure-http")
            .args(["--listen", &n.mesh_addr(), "--no-mdns"])
            .arg("--swarm-key")
            .arg(&self.key)
            .args(&self.extra)
            .env("TESTMESH_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if i != 0 {
            cmd.args(["--join", &join]);
        }
        n.child = Some(cmd.spawn().context("starting testmesh node")?);
        n.paused = false;
        Ok(())
    }

    /// Waits for node `i` to write its token and id.
    pub async fn wait_files(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        for _ in 0..300 {
            let token = std::fs::read_to_string(n.data_dir().join("api-token"));
            let id = std::fs::read_to_string(n.data_dir().join("node.id"));
            if let (Ok(t), Ok(id)) = (token, id)
                && !t.trim().is_empty()
            {
                n.token = t.trim().to_string();
                n.id = id.trim().to_string();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "node {i} did not start; see {}",
            n.dir.join("node.log").display()
        )
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            signal(pid, "STOP");
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            signal(pid, "CONT");
        }
        self.nodes[i].paused = false;
    }

    /// Ends every fault: resumes paused nodes, restarts killed ones, removes cuts.
    pub async fn heal_all(&mut self) -> anyhow::Result<()> {
        if let Some(ns) = &self.net {
            ns.heal(self.nodes.len())?;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            if !self.nodes[i].up() {
                self.start(i)?;
            }
        }
        Ok(())
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.resume(i);
            if let Some(pid) = self.nodes[i].pid() {
                signal(pid, "TERM");
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                for _ in 0..100 {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(ns) = &self.net {
            ns.destroy(self.nodes.len());
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_all();
    }
}
