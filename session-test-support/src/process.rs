//! Private server processes for fault tests: [`ServerProcess`] (a
//! [`FaultInjector`] that kills, restarts, stops and continues a real
//! server), [`RedisCluster`] (a private cluster of such processes, masters
//! with replicas), spare ports, signals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use session_core::conformance::faults::FaultInjector;

/// A local TCP port nothing listens on right now (the OS picks it; another
/// process may still take it before the caller binds it).
///
/// # Panics
///
/// When no local port can be bound at all.
#[must_use]
pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a local port")
}

/// Waits (up to 5 s) until every thread of process `pid` is stopped (`T`
/// in `/proc/<pid>/task/*/stat`), after a `SIGSTOP`: `kill` returns once
/// the signal is sent, not once the process has stopped, and a request sent
/// in between would still be answered.
///
/// # Panics
///
/// When the process is not stopped after 5 s.
pub fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/<pid>/task");
        let all_stopped = tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(')').is_some_and(|(_, rest)| {
                    matches!(rest.trim_start().chars().next(), Some('T' | 't'))
                })
            })
        });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` (a name such as `STOP`, `CONT`, `KILL`) to `pid` with
/// `kill(1)`, and for `STOP` waits until the process has stopped.
///
/// # Panics
///
/// When `kill` cannot be run or fails.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
    if signal == "STOP" {
        wait_until_stopped(pid);
    }
}

/// A server process a test owns (a private `redis-server` or `memcached` on a
/// spare port), started again with the same command line after a stop, and
/// a [`FaultInjector`] that breaks the real process: `stop` kills it
/// (`SIGKILL`), `start` runs it again on the same port, `freeze` and `thaw`
/// send `SIGSTOP` and `SIGCONT`. Whether data survives a stop is the
/// server's own configuration (Redis with `--appendonly yes --appendfsync
/// always` keeps every acknowledged write; Memcached keeps nothing).
///
/// The process is killed when this is dropped, also when a test fails
/// half-way.
#[derive(Debug)]
pub struct ServerProcess {
    program: String,
    args: Vec<String>,
    port: u16,
    probe: (&'static [u8], &'static [u8]),
    child: Mutex<Option<Child>>,
}

impl ServerProcess {
    /// Runs `program args…` (which must listen on 127.0.0.1:`port`) and
    /// waits until it answers `probe.0` with a reply starting with
    /// `probe.1`.
    ///
    /// # Panics
    ///
    /// When the program cannot be run (the message says how to install it)
    /// or does not answer within 10 s.
    pub async fn start(
        program: &str,
        args: &[&str],
        port: u16,
        probe: (&'static [u8], &'static [u8]),
    ) -> Self {
        let server = Self {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            port,
            probe,
            child: Mutex::new(None),
        };
        server.spawn().await;
        server
    }

    /// A `redis-server` on `port` without persistence, plus `extra`
    /// options (later ones win).
    pub async fn redis(port: u16, extra: &[&str]) -> Self {
        let port_arg = port.to_string();
        let mut args = vec![
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        args.extend_from_slice(extra);
        Self::start("redis-server", &args, port, (b"PING\r\n", b"+PONG")).await
    }

    /// A `memcached` on `port` with 64 MiB of memory.
    pub async fn memcached(port: u16) -> Self {
        Self::memcached_with(port, &[]).await
    }

    /// [`ServerProcess::memcached`] with more options, such as `-I 64k`
    /// (the item size limit; below 512 KiB it needs `-o slab_chunk_max=<at most
    /// the limit>` too).
    pub async fn memcached_with(port: u16, extra: &[&str]) -> Self {
        let port_arg = port.to_string();
        let mut args = vec!["-l", "127.0.0.1", "-p", &port_arg, "-U", "0", "-m", "64"];
        if is_root() {
            args.extend_from_slice(&["-u", "root"]);
        }
        args.extend_from_slice(extra);
        Self::start("memcached", &args, port, (b"version\r\n", b"VERSION")).await
    }

    /// `scheme://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().expect("lock").as_ref().map(Child::id)
    }

    async fn spawn(&self) {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `{}` ({e}): install it (`scripts/services.sh` at the workspace \
                     root does, or `apt-get install redis-server memcached`) and make sure it \
                     is on PATH",
                    self.program
                )
            });
        *self.child.lock().expect("lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "`{}` on port {} did not answer within 10 s",
                self.program,
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 16];
        stream.write_all(self.probe.0).is_ok()
            && stream
                .read(&mut reply)
                .is_ok_and(|n| reply[..n].starts_with(self.probe.1))
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().expect("lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().expect("the server process is not running");
        signal(pid, name);
    }
}

#[async_trait]
impl FaultInjector for ServerProcess {
    async fn stop(&self) {
        self.kill();
    }

    async fn start(&self) {
        self.spawn().await;
    }

    async fn freeze(&self) {
        self.signal("STOP");
    }

    async fn thaw(&self) {
        self.signal("CONT");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A frozen process ignores nothing but SIGKILL; continue it
            // anyway so no stopped process lingers if the kill fails.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        self.kill();
    }
}

/// A private Redis Cluster a test owns: `masters` masters with one replica
/// each, every node a [`ServerProcess`] on spare ports (client and cluster
/// bus), so that a test can kill a master and watch its replica take over
/// without disturbing the shared test cluster. Built with `redis-cli
/// --cluster create`; node state lives in a temporary directory, removed
/// when this is dropped (every node is killed then too).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ServerProcess>,
    ports: Vec<u16>,
    node_timeout: Duration,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts `masters` masters and as many replicas (at least 3 masters,
    /// as Redis requires), with `cluster-node-timeout` `node_timeout` (how
    /// long a master may not answer before its replica fails it over), and
    /// waits until every node reports `cluster_state:ok` and every replica
    /// has synced.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` cannot be run (the message says
    /// how to install them), or the cluster is not formed within 30 s.
    pub async fn start(masters: usize, node_timeout: Duration) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "session-test-cluster-{}-{}",
            std::process::id(),
            spare_port()
        ));
        std::fs::create_dir_all(&dir).expect("creating the cluster's directory");
        let timeout_ms = node_timeout.as_millis().to_string();
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..masters.max(3) * 2 {
            let (port, bus) = (spare_port(), spare_port());
            let conf = dir.join(format!("nodes-{port}.conf"));
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.to_str().expect("a UTF-8 temporary directory"),
                "--cluster-node-timeout",
                &timeout_ms,
                "--cluster-port",
                &bus.to_string(),
                "--dir",
                dir.to_str().expect("a UTF-8 temporary directory"),
            ];
            nodes.push(ServerProcess::redis(port, &args).await);
            ports.push(port);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.output().unwrap_or_else(|e| {
            panic!(
                "cannot run `redis-cli` ({e}): install it (`scripts/services.sh` at the workspace \
                 root does, or `apt-get install redis-tools`) and make sure it is on PATH"
            )
        });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            nodes,
            ports,
            node_timeout,
            dir,
        };
        cluster.wait_until_healthy(Duration::from_secs(30)).await;
        cluster
    }

    /// The URL of every node, masters and replicas.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url("redis")).collect()
    }

    /// The client port of every node.
    #[must_use]
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The `cluster-node-timeout` the nodes run with.
    #[must_use]
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// The node process on `port`.
    ///
    /// # Panics
    ///
    /// When no node of this cluster listens on `port`.
    #[must_use]
    pub fn node(&self, port: u16) -> &ServerProcess {
        let i = self
            .ports
            .iter()
            .position(|&p| p == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"));
        &self.nodes[i]
    }

    /// The port of the live master that serves `slot`, as the first
    /// running node that answers sees it (`CLUSTER SHARDS`), or `None` if
    /// it knows none.
    #[must_use]
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        self.shards()
            .into_iter()
            .find(|s| s.slots.iter().any(|r| r.contains(&slot)))?
            .master
    }

    /// The slot ranges of the master on `port`, as the first running node
    /// that answers sees them (empty when it serves none).
    #[must_use]
    pub fn slots_of(&self, port: u16) -> Vec<std::ops::RangeInclusive<u16>> {
        self.shards()
            .into_iter()
            .find(|s| s.master == Some(port))
            .map(|s| s.slots)
            .unwrap_or_default()
    }

    /// The cluster's shards (`CLUSTER SHARDS`, asked of the first running
    /// node that answers): each shard's slot ranges and its master's port
    /// when that master is online.
    fn shards(&self) -> Vec<Shard> {
        let Some(out) = self
            .ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, n)| n.pid().is_some())
            .find_map(|(&p, _)| redis_cli(p, &["cluster", "shards"]))
        else {
            return Vec::new();
        };
        // One line per field: "slots", "0", "5460", "nodes", "id", "…",
        // "port", "7101", …, "role", "master", …, "health", "online", …
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let mut shards: Vec<Shard> = Vec::new();
        let mut port = None;
        let mut role_master = false;
        let mut i = 0;
        while i < lines.len() {
            match lines[i] {
                "slots" => {
                    let mut slots = Vec::new();
                    i += 1;
                    while let (Some(Ok(lo)), Some(Ok(hi))) = (
                        lines.get(i).map(|l| l.parse::<u16>()),
                        lines.get(i + 1).map(|l| l.parse::<u16>()),
                    ) {
                        slots.push(lo..=hi);
                        i += 2;
                    }
                    shards.push(Shard {
                        slots,
                        master: None,
                    });
                    continue;
                }
                "port" => port = lines.get(i + 1).and_then(|p| p.parse::<u16>().ok()),
                "role" => role_master = lines.get(i + 1) == Some(&"master"),
                "health" if role_master && lines.get(i + 1) == Some(&"online") => {
                    if let Some(shard) = shards.last_mut() {
                        shard.master = port;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        shards
    }

    /// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash
    /// tag (the text between the first `{` and the next `}`, when not
    /// empty), modulo 16384, as Redis Cluster computes it.
    #[must_use]
    pub fn slot_of(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let hashed = bytes
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
                (close > 0).then(|| &bytes[open + 1..open + 1 + close])
            })
            .unwrap_or(bytes);
        let mut crc: u16 = 0;
        for &b in hashed {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 == 0 {
                    crc << 1
                } else {
                    (crc << 1) ^ 0x1021
                };
            }
        }
        crc % 16_384
    }

    /// Waits until every running node reports `cluster_state:ok` and every
    /// running replica's link to its master is up.
    ///
    /// # Panics
    ///
    /// When that does not happen within `limit`.
    pub async fn wait_until_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let healthy = self
                .ports
                .iter()
                .zip(&self.nodes)
                .filter(|(_, n)| n.pid().is_some())
                .all(|(&p, _)| {
                    let state = redis_cli(p, &["cluster", "info"])
                        .is_some_and(|i| i.contains("cluster_state:ok"));
                    let replication = redis_cli(p, &["info", "replication"]).unwrap_or_default();
                    state
                        && (replication.contains("role:master")
                            || replication.contains("master_link_status:up"))
                });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private Redis Cluster on ports {:?} did not become healthy within {limit:?}",
                self.ports
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One shard of a [`RedisCluster`]: its slots and live master.
#[derive(Debug)]
struct Shard {
    slots: Vec<std::ops::RangeInclusive<u16>>,
    master: Option<u16>,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p <port> <args>`'s output, or `None` when it fails, the
/// node does not answer or answers an error.
fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.starts_with("Could not connect") && !text.starts_with("ERR"))
        .then_some(text)
}

fn is_root() -> bool {
    std::env::var("USER").as_deref() == Ok("root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_computed_as_redis_cluster_does() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(RedisCluster::slot_of("123456789"), 0x31C3);
        assert_eq!(RedisCluster::slot_of("foo"), 12_182);
        assert_eq!(
            RedisCluster::slot_of("{user1000}.following"),
            RedisCluster::slot_of("user1000")
        );
        // An empty tag hashes the whole key.
        assert_eq!(RedisCluster::slot_of("foo{}{bar}"), 8_363);
        assert_eq!(RedisCluster::slot_of("foo{{bar}}zap"), 4_015);
    }

    #[test]
    fn a_stopped_child_is_seen_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        signal(child.id(), "STOP");
        signal(child.id(), "CONT");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_ne!(spare_port(), 0);
    }
}
