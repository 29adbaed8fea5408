//! Binds the listener, prints what a newcomer needs, and serves.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use session_core::SessionManager;

use crate::backend::{self, Backend, BackendError};
use crate::config::Config;
use crate::tls::{self, Identity, TlsError};
use crate::users::{Users, UsersError};

/// The user created when `DEMO_USERS` is unset.
pub const DEFAULT_USER: &str = "demo";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `DEMO_USERS` is malformed.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// The session store could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The timeouts or limits are inconsistent.
    #[error("session options: {0}")]
    Session(#[from] session_core::ConfigError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source} (choose another with --listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A demo server, bound and ready to serve.
#[derive(Debug)]
pub struct Demo {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    identity: Identity,
    backend: Backend,
    banner: String,
}

impl Demo {
    /// Opens the store, prepares users and TLS, and binds `config.listen`.
    ///
    /// # Errors
    ///
    /// [`StartupError`], with a message saying what to fix.
    pub async fn bind(config: Config) -> Result<Self, StartupError> {
        let session_config = config.session_config()?;
        let backend = backend::open(&config.backend, &config.namespace).await?;
        let users_spec = config.users.clone();
        let (users, generated) = tokio::task::spawn_blocking(move || match users_spec {
            Some(spec) => Users::parse(&spec).map(|u| (u, None)),
            None => Users::generated(DEFAULT_USER).map(|(u, pw)| (u, Some(pw))),
        })
        .await
        .map_err(|e| UsersError::Hash(e.to_string()))??;
        let identity = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => tls::from_files(cert, key)?,
            _ => tls::self_signed(config.listen.ip())?,
        };
        let manager = SessionManager::builder_arc(Arc::clone(&backend.store))
            .config(session_config)
            .build();
        let bind_err = |source| StartupError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;

        let mut banner = format!("session-demo listening on https://{addr}/\n");
        let _ = writeln!(
            banner,
            "  session store: {}{}",
            config.backend.to_ascii_lowercase(),
            if backend.encrypted {
                " (encrypted with SESSION_ENCRYPTION_KEY)"
            } else {
                ""
            }
        );
        match &generated {
            Some(pw) => {
                let _ = writeln!(
                    banner,
                    "  log in as {DEFAULT_USER:?} with password {pw:?} (set DEMO_USERS=name:password,... to choose users)"
                );
            }
            None => {
                let _ = writeln!(banner, "  users: {}", users.names().join(", "));
            }
        }
        if identity.self_signed_pem.is_some() {
            let _ = writeln!(
                banner,
                "  TLS: self-signed certificate generated at start; your browser will warn once (use --cert/--key for your own)"
            );
        }
        let router = crate::app::router(manager, Arc::new(users));
        Ok(Self {
            listener,
            addr,
            router,
            identity,
            backend,
            banner,
        })
    }

    /// The address actually bound (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The generated certificate in PEM, for clients that should trust it;
    /// `None` when --cert/--key were given.
    #[must_use]
    pub fn certificate_pem(&self) -> Option<&str> {
        self.identity.self_signed_pem.as_deref()
    }

    /// What to print at start: the URL, the store, how to log in.
    #[must_use]
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// Serves until the process ends.
    ///
    /// # Errors
    ///
    /// I/O errors of the listener.
    pub async fn serve(self) -> std::io::Result<()> {
        let Self {
            listener,
            router,
            identity,
            backend,
            ..
        } = self;
        let tls = RustlsConfig::from_config(identity.config);
        let result = axum_server::from_tcp_rustls(listener, tls)?
            .serve(router.into_make_service())
            .await;
        drop(backend);
        result
    }
}
