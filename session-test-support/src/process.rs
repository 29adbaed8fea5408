//! Private server processes for fault tests.

use std::time::{Duration, Instant};

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
