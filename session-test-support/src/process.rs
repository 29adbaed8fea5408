//! Private server processes for fault tests: [`ServerProcess`] (a
//! [`FaultInjector`] that kills, restarts, stops and continues a real
//! server), spare ports, signals.

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
