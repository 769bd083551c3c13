//! Encrypted, authenticated connections to NATS and to the OTLP collector.
//!
//! - **Postgres** needs nothing here: `DATABASE_URL` carries the standard libpq parameters,
//!   which the driver (sqlx with rustls) understands — `sslmode=verify-full&sslrootcert=<CA
//!   file>` verifies the server's certificate and host name against that CA.
//! - **NATS**: a `tls://` URL, or [`NatsSecurityArgs::nats_ca_file`], requires TLS; the CA file
//!   (PEM) is the trust root for the server's certificate. The client authenticates with a
//!   credentials file (user JWT and NKey seed) or a bare NKey seed file, and may present a
//!   client certificate (mutual TLS).
//! - **OTLP/HTTP**: an `https://` collector endpoint is verified against the CA file in the
//!   standard `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` / `OTEL_EXPORTER_OTLP_CERTIFICATE`, or the
//!   system's trust store when neither is set ([`OtlpHttp`]).
//!
//! TLS uses rustls with the `ring` provider everywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A TLS or authentication file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {setting} file {path}: {source}; check the path and its permissions")]
    Read {
        /// The setting that named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what the setting needs.
    #[error("{setting} file {path} is not usable: {detail}")]
    Invalid {
        /// The setting that named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Two settings that exclude each other are both set.
    #[error("{0} and {1} are both set; authenticate with one of them")]
    Conflict(&'static str, &'static str),
    /// A setting needs another one.
    #[error("{0} needs {1} as well")]
    Needs(&'static str, &'static str),
    /// The TLS configuration for the collector could not be built.
    #[error("cannot build the OTLP HTTP client: {0}")]
    ClientTls(#[source] rustls::Error),
    /// The HTTP client for the collector could not be built.
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// NATS security settings (flags and environment variables). All are optional; with none
/// set the connection is as `NATS_URL` says (plain `nats://`, or TLS with the system's trust
/// store for `tls://`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsSecurityArgs {
    /// CA certificate(s) (PEM) that sign the NATS server's certificate; TLS is then required.
    #[arg(long, env = "NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with NATS (with --nats-client-key).
    #[arg(long, env = "NATS_CLIENT_CERT")]
    pub nats_client_cert: Option<PathBuf>,

    /// Private key (PEM) of --nats-client-cert.
    #[arg(long, env = "NATS_CLIENT_KEY")]
    pub nats_client_key: Option<PathBuf>,

    /// NATS credentials file (user JWT and NKey seed, as `nsc` writes it).
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,

    /// File holding a user NKey seed (`SU…`) to authenticate with.
    #[arg(long, env = "NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
}

fn read(setting: &'static str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file.
fn pem_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let invalid = |detail: String| TlsError::Invalid {
        setting,
        path: path.to_owned(),
        detail,
    };
    let pem = read(setting, path)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("not PEM certificates ({err})")))?;
    if certs.is_empty() {
        return Err(invalid("no `BEGIN CERTIFICATE` block in it".into()));
    }
    Ok(certs)
}

impl NatsSecurityArgs {
    /// Connect options carrying these settings (files are read and checked now, so a wrong
    /// path fails at start-up with the setting's name rather than at the first reconnect).
    pub async fn connect_options(&self) -> Result<async_nats::ConnectOptions, TlsError> {
        let mut options = match (&self.nats_creds_file, &self.nats_nkey_file) {
            (Some(_), Some(_)) => {
                return Err(TlsError::Conflict("NATS_CREDS_FILE", "NATS_NKEY_FILE"));
            }
            (Some(path), None) => {
                let creds = read("NATS_CREDS_FILE", path)?;
                async_nats::ConnectOptions::with_credentials(&creds).map_err(|err| {
                    TlsError::Invalid {
                        setting: "NATS_CREDS_FILE",
                        path: path.clone(),
                        detail: format!("{err} (expected a user JWT and an NKey seed block)"),
                    }
                })?
            }
            (None, Some(path)) => {
                let seed = read("NATS_NKEY_FILE", path)?.trim().to_owned();
                if let Err(err) = nkeys::KeyPair::from_seed(&seed) {
                    return Err(TlsError::Invalid {
                        setting: "NATS_NKEY_FILE",
                        path: path.clone(),
                        detail: format!("not an NKey seed ({err}); it starts with `SU`"),
                    });
                }
                async_nats::ConnectOptions::with_nkey(seed)
            }
            (None, None) => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &self.nats_ca_file {
            pem_certificates("NATS_CA_FILE", path)?;
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        match (&self.nats_client_cert, &self.nats_client_key) {
            (Some(cert), Some(key)) => {
                pem_certificates("NATS_CLIENT_CERT", cert)?;
                read("NATS_CLIENT_KEY", key)?;
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (Some(_), None) => return Err(TlsError::Needs("NATS_CLIENT_CERT", "NATS_CLIENT_KEY")),
            (None, Some(_)) => return Err(TlsError::Needs("NATS_CLIENT_KEY", "NATS_CLIENT_CERT")),
            (None, None) => {}
        }
        Ok(options)
    }
}

/// The OTLP/HTTP client's settings, from the standard variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpHttp {
    /// CA file for an `https://` collector (`OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`);
    /// `None`: the system's trust store.
    pub certificate: Option<PathBuf>,
    /// Per-request timeout (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, milliseconds; 10 s by
    /// default, as the exporter's own client).
    pub timeout: Duration,
}

impl Default for OtlpHttp {
    fn default() -> Self {
        Self {
            certificate: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl OtlpHttp {
    /// Reads the settings through `get` (a variable's value, if set); the traces-specific
    /// variable wins. A timeout that is not a number of milliseconds is ignored, as the
    /// exporter itself does.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: [&str; 2]| {
            names
                .into_iter()
                .filter_map(|name| get(name).map(|v| v.trim().to_owned()))
                .find(|v| !v.is_empty())
        };
        let certificate = first([
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ])
        .map(PathBuf::from);
        let timeout = first([
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ])
        .and_then(|ms| ms.parse().ok())
        .map_or(Self::default().timeout, Duration::from_millis);
        Self {
            certificate,
            timeout,
        }
    }

    /// The HTTP client for OTLP/HTTP export: rustls (ring) trusting the CA file when given,
    /// else the system's trust store.
    pub fn client(&self) -> Result<reqwest::Client, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.certificate {
            Some(path) => {
                for cert in pem_certificates("OTEL_EXPORTER_OTLP_CERTIFICATE", path)? {
                    roots.add(cert).map_err(|err| TlsError::Invalid {
                        setting: "OTEL_EXPORTER_OTLP_CERTIFICATE",
                        path: path.to_owned(),
                        detail: err.to_string(),
                    })?;
                }
            }
            None => {
                // Unreadable system certificates are skipped: a collector signed by one of
                // them then fails its handshake with a message naming the certificate problem.
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::ClientTls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(self.timeout)
            .build()
            .map_err(TlsError::Client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ExportConfig;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn otlp_http_settings_prefer_the_traces_variables_and_ignore_a_bad_timeout() {
        let http = OtlpHttp::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/general.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces.pem"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]));
        assert_eq!(http.certificate, Some(PathBuf::from("/traces.pem")));
        assert_eq!(http.timeout, Duration::from_millis(2500));
        let http = OtlpHttp::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]));
        assert_eq!(http, OtlpHttp::default());
    }

    #[test]
    fn a_collector_certificate_with_grpc_is_refused_by_name() {
        let err = ExportConfig::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
        ]))
        .expect_err("refused");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
            "{err}"
        );
    }

    #[test]
    fn an_unusable_collector_ca_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        for path in [empty, dir.path().join("absent.pem")] {
            let http = OtlpHttp {
                certificate: Some(path),
                ..OtlpHttp::default()
            };
            let err = http.client().expect_err("refused");
            assert!(
                err.to_string().contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
                "{err}"
            );
        }
    }
}
