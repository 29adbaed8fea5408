//! The rustls server configuration: certificate files, or a self-signed
//! certificate generated at start.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
}

/// A TLS identity: the server configuration and, for a generated
/// certificate, its PEM (so clients can be told to trust it).
#[derive(Debug)]
pub struct Identity {
    /// The rustls configuration, ALPN `h2` and `http/1.1`.
    pub config: Arc<ServerConfig>,
    /// The generated certificate in PEM, `None` for files given.
    pub self_signed_pem: Option<String>,
}

/// A self-signed certificate for `localhost`, `127.0.0.1`, `::1` and `ip`.
///
/// # Errors
///
/// [`TlsError`] if generation fails.
pub fn self_signed(ip: IpAddr) -> Result<Identity, TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    let ck = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = server_config(vec![ck.cert.der().clone()], key)?;
    Ok(Identity {
        config,
        self_signed_pem: Some(ck.cert.pem()),
    })
}

/// The identity in PEM files `cert` (a chain) and `key`.
///
/// # Errors
///
/// [`TlsError`] when a file is missing or malformed or rustls refuses it.
pub fn from_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let pem_err = |what, path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Pem { what, path, source }
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(pem_err("certificate", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err("certificate", cert))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err("private key", key))?;
    Ok(Identity {
        config: server_config(certs, key)?,
        self_signed_pem: None,
    })
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
