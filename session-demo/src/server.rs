//! Binds the listener, prints what a newcomer needs, and serves.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use session_core::SessionManager;

use crate::backend::{self, Backend, BackendError};
use crate::config::{Config, MIN_STORAGE_KEY_SECRET_LEN, STORAGE_KEY_SECRET_VAR};
use crate::limits::LoginThrottle;
use crate::password::{self, Auth, PasswordChecker};
use crate::tls::{self, Identity, TlsError};
use crate::users::{Users, UsersError};

/// How often the login throttles drop entries whose allowance is full again.
const THROTTLE_HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(60);

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
    #[error("session options")]
    Session(#[from] session_core::ConfigError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `SESSION_DEMO_STORAGE_KEY_SECRET` is too short.
    #[error("{STORAGE_KEY_SECRET_VAR} must be at least {MIN_STORAGE_KEY_SECRET_LEN} bytes (e.g. the output of `openssl rand -base64 32`)")]
    StorageKeySecret,
    /// The operating system's random generator failed.
    #[error("cannot generate a storage-key secret: {0}")]
    Random(String),
    /// The password workers could not be started.
    #[error("cannot start the password workers")]
    Workers(#[source] std::io::Error),
    /// The address could not be bound.
    #[error("cannot listen on {addr} (choose another with --listen)")]
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
        let (secret, secret_generated) = match &config.storage_key_secret {
            Some(s) if s.len() >= MIN_STORAGE_KEY_SECRET_LEN => (s.as_bytes().to_vec(), false),
            Some(_) => return Err(StartupError::StorageKeySecret),
            None => {
                let mut random = vec![0u8; 32];
                getrandom::fill(&mut random).map_err(|e| StartupError::Random(e.to_string()))?;
                (random, true)
            }
        };
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
            .key_secret(&secret)
            .build();
        drop(secret);
        let users = Arc::new(users);
        let workers = config
            .password_workers
            .map_or_else(password::default_workers, std::num::NonZeroUsize::get);
        let checker = PasswordChecker::new(Arc::clone(&users), workers, config.password_queue)
            .map_err(StartupError::Workers)?;
        let throttle = Arc::new(LoginThrottle::new(
            config.login_limit_per_ip,
            config.login_limit_per_account,
            config.throttle_max_keys.get(),
        ));
        throttle.spawn_housekeeping(THROTTLE_HOUSEKEEPING);
        let auth = Arc::new(Auth { throttle, checker });
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
        if secret_generated {
            let _ = writeln!(
                banner,
                "  warning: {STORAGE_KEY_SECRET_VAR} is not set; storage keys are keyed with a random secret generated at start, so sessions do not survive a restart and instances sharing a store do not see each other's sessions (set it to at least {MIN_STORAGE_KEY_SECRET_LEN} random bytes, e.g. `openssl rand -base64 32`)"
            );
        } else {
            let _ = writeln!(
                banner,
                "  storage keys: keyed with {STORAGE_KEY_SECRET_VAR}"
            );
        }
        let _ = writeln!(
            banner,
            "  password attempts: {} per address, {} per account (N/SECS); {} password workers, queue {}",
            config.login_limit_per_ip,
            config.login_limit_per_account,
            auth.checker.workers(),
            config.password_queue
        );
        if identity.self_signed_pem.is_some() {
            let _ = writeln!(
                banner,
                "  TLS: self-signed certificate generated at start; your browser will warn once (use --cert/--key for your own)"
            );
        }
        let router = crate::app::router(manager, auth);
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
            .serve(router.into_make_service_with_connect_info::<SocketAddr>())
            .await;
        drop(backend);
        result
    }
}
