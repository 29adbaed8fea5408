//! [`FaultProxy`]: a TCP proxy in front of a real server whose path the
//! fault scenarios break.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use super::FaultInjector;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Bytes flow both ways.
    Up,
    /// Connections stay open and new ones are accepted, but no byte moves.
    Frozen,
    /// The listening socket is closed (connections are refused) and every
    /// open connection has been closed.
    Stopped,
}

/// The proxy's state: the mode, and an epoch that every stop increments so
/// connections accepted before a stop never carry another byte, however
/// quickly the proxy starts again.
#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    epoch: u64,
    /// Incremented by [`FaultProxy::forget_connections`]: connections
    /// accepted under an older value are reset when next used.
    forgotten: u64,
}

/// A TCP proxy on a loopback port in front of a real server, implementing
/// [`FaultInjector`] by breaking the network path, not the server: stopping
/// closes every proxied connection and the listening socket (clients see
/// their connections closed and new ones refused, as when a server process
/// dies); freezing stops every byte in both directions while connections
/// stay open (as a `SIGSTOP`ped server or a black-holed route). The server
/// itself keeps running with its data, so one server can serve many
/// scenarios in parallel, each behind its own proxy.
///
/// Dropping the proxy closes its listener and every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    /// Whether the listening socket is open.
    listening: watch::Receiver<bool>,
    connections: Arc<AtomicUsize>,
    upstream: Arc<std::sync::RwLock<String>>,
}

/// How long [`FaultProxy`] waits for its own sockets to open or close.
const SETTLE: Duration = Duration::from_secs(5);

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1` (a free port) that forwards every
    /// connection to `upstream` (`host:port`). The upstream is dialled for
    /// each accepted connection, so it need not answer yet.
    ///
    /// # Errors
    ///
    /// The loopback listener could not be bound.
    pub async fn start(upstream: impl Into<String>) -> std::io::Result<Self> {
        let upstream = Arc::new(std::sync::RwLock::new(upstream.into()));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, states) = watch::channel(State {
            mode: Mode::Up,
            epoch: 0,
            forgotten: 0,
        });
        let (listening_tx, listening) = watch::channel(true);
        let connections = Arc::new(AtomicUsize::new(0));
        let upstream_for_loop = Arc::clone(&upstream);
        tokio::spawn(accept_loop(
            listener,
            addr,
            upstream,
            states,
            listening_tx,
            connections.clone(),
        ));
        Ok(Self {
            addr,
            state,
            listening,
            connections,
            upstream: upstream_for_loop,
        })
    }

    /// The proxy's address: point the store at this instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Points connections accepted from now on at `upstream` (`host:port`);
    /// open ones stay with the server they reached. This is a failover
    /// behind one endpoint, as a managed service or a Sentinel-aware proxy
    /// presents it: new connections reach the new primary, old ones the
    /// demoted one.
    pub fn set_upstream(&self, upstream: impl Into<String>) {
        *self
            .upstream
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = upstream.into();
    }

    /// How many proxied connections are open right now.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Forgets every open connection, as a restarted load balancer or NAT
    /// does: each still looks alive while idle, and is reset (`RST`) the
    /// next time the client sends on it, after the request was written.
    /// No liveness check of an idle pool can see this coming; a store must
    /// retry what it safely can on a fresh connection.
    pub fn forget_connections(&self) {
        self.state.send_modify(|s| s.forgotten += 1);
    }

    fn set_mode(&self, mode: Mode) {
        self.state.send_modify(|s| {
            if mode == Mode::Stopped && s.mode != Mode::Stopped {
                s.epoch += 1;
            }
            s.mode = mode;
        });
    }

    async fn wait_listening(&self, want: bool) {
        let mut listening = self.listening.clone();
        let waited = tokio::time::timeout(SETTLE, listening.wait_for(|l| *l == want)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the fault proxy on {} could not {} its listening socket within {SETTLE:?}",
            self.addr,
            if want { "reopen" } else { "close" },
        );
    }
}

#[async_trait]
impl FaultInjector for FaultProxy {
    /// Closes every proxied connection and the listening socket; returns
    /// once both are closed.
    async fn stop(&self) {
        self.set_mode(Mode::Stopped);
        self.wait_listening(false).await;
        let deadline = Instant::now() + SETTLE;
        while self.open_connections() > 0 {
            assert!(
                Instant::now() < deadline,
                "the fault proxy on {} still had {} connections open after {SETTLE:?}",
                self.addr,
                self.open_connections()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Listens on the same port again; returns once it accepts connections.
    async fn start(&self) {
        self.set_mode(Mode::Up);
        self.wait_listening(true).await;
    }

    /// Stops every byte in both directions; open connections stay open and
    /// new ones are accepted but never reach the server.
    async fn freeze(&self) {
        assert!(
            self.state.borrow().mode != Mode::Stopped,
            "freeze a started proxy"
        );
        self.set_mode(Mode::Frozen);
    }

    /// Lets the bytes held by [`FaultInjector::freeze`] through.
    async fn thaw(&self) {
        self.set_mode(Mode::Up);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.set_mode(Mode::Stopped);
        // Closing the channel ends the accept loop and every pump.
        self.state.send_modify(|s| s.epoch = u64::MAX);
    }
}

/// Binds `addr` again after a stop (its accepted connections may still be
/// in `TIME_WAIT`, hence `SO_REUSEADDR`).
fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    first: TcpListener,
    addr: SocketAddr,
    upstream: Arc<std::sync::RwLock<String>>,
    mut states: watch::Receiver<State>,
    listening: watch::Sender<bool>,
    connections: Arc<AtomicUsize>,
) {
    let mut listener = Some(first);
    loop {
        let state = *states.borrow_and_update();
        if state.epoch == u64::MAX {
            return;
        }
        match (&listener, state.mode) {
            (Some(_), Mode::Stopped) => {
                listener = None;
                listening.send_replace(false);
            }
            (None, Mode::Up | Mode::Frozen) => {
                let deadline = Instant::now() + SETTLE;
                loop {
                    match rebind(addr) {
                        Ok(l) => break listener = Some(l),
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        // The port is gone: stay closed, and let the caller's
                        // `start` time out with its message.
                        Err(_) => break,
                    }
                }
                if listener.is_some() {
                    listening.send_replace(true);
                }
            }
            _ => {}
        }
        match &listener {
            Some(l) => {
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((client, _)) = accepted {
                            connections.fetch_add(1, Ordering::SeqCst);
                            let upstream = upstream
                                .read()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .clone();
                            let (states, connections) = (states.clone(), connections.clone());
                            tokio::spawn(async move {
                                proxy_connection(client, upstream, states, state).await;
                                connections.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                    }
                    changed = states.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if states.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits until bytes may flow; `false` when the connection must close
/// (a stop since it was accepted, or the proxy is gone).
async fn may_flow(states: &mut watch::Receiver<State>, epoch: u64) -> bool {
    let waited = states
        .wait_for(|s| s.epoch != epoch || s.mode == Mode::Up)
        .await;
    matches!(waited, Ok(s) if s.epoch == epoch)
}

async fn proxy_connection(
    mut client: TcpStream,
    upstream: String,
    mut states: watch::Receiver<State>,
    born: State,
) {
    // A frozen path holds new connections too: the server is not dialled
    // (so it sees no handshake) until the path thaws.
    if !may_flow(&mut states, born.epoch).await {
        return;
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let forgotten = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(client_read, server_write, states.clone(), born, true);
        let down = pump(server_read, client_write, states, born, false);
        // Either direction ending (EOF, error, a stop or a forgotten
        // connection) ends the connection: both sockets close below.
        tokio::select! {
            reset = up => reset,
            reset = down => reset,
        }
    };
    if forgotten {
        let _ = client.set_zero_linger();
    }
}

/// Moves bytes `from` → `to` while the path is up; returns `true` when the
/// connection must be reset (it was forgotten and the client sent on it).
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut states: watch::Receiver<State>,
    born: State,
    from_client: bool,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !may_flow(&mut states, born.epoch).await {
            return false;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            },
            // A freeze or stop while waiting for bytes: check again.
            changed = states.changed() => {
                if changed.is_err() {
                    return false;
                }
                continue;
            }
        };
        if from_client && states.borrow().forgotten != born.forgotten {
            return true;
        }
        // A freeze between the read and the write holds these bytes too.
        if !may_flow(&mut states, born.epoch).await {
            return false;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}
