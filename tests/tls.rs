//! Encrypted, authenticated connections against local TLS servers the tests start, with a
//! certificate authority generated per test: Postgres with `ssl=on` accepting TLS only,
//! `nats-server` requiring TLS and an NKey, a credentials file or a client certificate, and an
//! HTTPS OTLP collector. Each is verified against the configured CA (a foreign CA is
//! refused), and the worker deploys through them.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Env, wait_for, wait_http};
use deploy_worker::events::EventKind;
use deploy_worker::store::{Store, StoreSettings};
use deploy_worker::tls::NatsSecurityArgs;
use deploy_worker::worker::Worker;
use devkit::sandbox::{LocalNats, LocalPostgres};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const LONG: Duration = Duration::from_secs(60);

/// A test CA, a server certificate it signed for `localhost` and `127.0.0.1` and a client
/// certificate, as PEM files in a temporary directory.
struct Pki {
    dir: TempDir,
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "deploy-worker test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key"))
            .expect("ca certificate");
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client
            .distinguished_name
            .push(DnType::CommonName, "deploy-worker");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client
            .signed_by(&client_key, &ca)
            .expect("client certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            dir,
        };
        std::fs::write(pki.ca_file(), ca.pem()).expect("write ca");
        std::fs::write(pki.path("server.pem"), &pki.cert_pem).expect("write cert");
        std::fs::write(pki.path("server.key"), &pki.key_pem).expect("write key");
        std::fs::write(pki.path("client.pem"), client.pem()).expect("write client cert");
        std::fs::write(pki.path("client.key"), client_key.serialize_pem()).expect("write key");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }
}

fn small_pool() -> StoreSettings {
    StoreSettings {
        max_connections: 2,
        batch_max: 4,
    }
}

fn verify_full(pg: &LocalPostgres, ca: &Path) -> String {
    format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca.display()
    )
}

/// Deploys one endpoint through `worker`'s settings and waits for READY and `/readyz` 200.
async fn deploys_one_endpoint(env: &Env, worker: &Worker) {
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    env.wait_status(id, "READY").await;
    wait_http(worker.http_addr(), "/readyz", LONG, |r| r.status == 200).await;
}

/// Connecting to `url` with `args` fails (`what` says how the client was set up).
async fn refused(args: &NatsSecurityArgs, url: &str, what: &str) {
    let options = args.connect_options().await.expect("options");
    assert!(options.connect(url).await.is_err(), "connected with {what}");
}

/// The worker, reaching `nats` at `url` with `security`, consumes, deploys and answers
/// readiness.
async fn worker_deploys_through(nats: LocalNats, url: String, security: NatsSecurityArgs) {
    let pg = LocalPostgres::start().expect("postgres");
    let options = security.connect_options().await.expect("options");
    let env = Env::with_servers(pg, nats, options, &url).await;
    let mut settings = env.settings();
    settings.nats_url = Some(url);
    settings.nats_security = security;
    let worker = Worker::start(&settings).await.expect("start");
    deploys_one_endpoint(&env, &worker).await;
    worker.shutdown().await.expect("shutdown");
}

#[actix_rt::test]
async fn postgres_is_reached_over_tls_verified_against_the_configured_ca() {
    let pki = Pki::new();
    let mut pg = LocalPostgres::start().expect("postgres");
    pg.enable_tls(&pki.cert_pem, &pki.key_pem).expect("tls on");

    // The server takes TLS only: a plain connection is refused, so a success below is TLS.
    let plain = format!("{}?sslmode=disable", pg.url());
    assert!(Store::connect(&plain, small_pool()).await.is_err());
    // A CA that did not sign the server's certificate is refused.
    let other = Pki::new();
    let err = Store::connect(&verify_full(&pg, &other.ca_file()), small_pool())
        .await
        .err()
        .expect("a foreign CA must be refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // A missing CA file is named.
    let missing = verify_full(&pg, &pki.path("absent.pem"));
    let err = Store::connect(&missing, small_pool())
        .await
        .err()
        .expect("missing CA");
    assert!(err.to_string().contains("DATABASE_URL"), "{err}");

    // The worker migrates, deploys and answers readiness over verified TLS.
    let verified = verify_full(&pg, &pki.ca_file());
    let env = Env::with_postgres(pg).await;
    let mut settings = env.settings();
    settings.database_url = Some(verified);
    let worker = Worker::start(&settings).await.expect("start over TLS");
    deploys_one_endpoint(&env, &worker).await;
    worker.shutdown().await.expect("shutdown");
}

/// `nats-server` requiring TLS with `pki`'s certificate and the NKey `user`.
fn nats_with_tls_and_nkey(pki: &Pki, user: &str) -> LocalNats {
    LocalNats::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\nauthorization {{\n  users = [ {{ nkey: \"{user}\" }} ]\n}}\n",
        pki.path("server.pem").display(),
        pki.path("server.key").display(),
    ))
    .expect("nats-server with tls")
}

#[actix_rt::test]
async fn nats_is_reached_over_tls_with_the_configured_ca_and_nkey() {
    let pki = Pki::new();
    let user = nkeys::KeyPair::new_user();
    let seed_file = pki.path("user.nk");
    std::fs::write(&seed_file, user.seed().expect("seed")).expect("write seed");
    let nats = nats_with_tls_and_nkey(&pki, &user.public_key());
    let url = nats.url().replacen("nats://", "tls://", 1);
    let security = NatsSecurityArgs {
        nats_ca_file: Some(pki.ca_file()),
        nats_nkey_file: Some(seed_file.clone()),
        ..NatsSecurityArgs::default()
    };

    // Refused: without the NKey, without the CA (system roots), with another NKey.
    let stranger = pki.path("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().expect("seed")).expect("write");
    for (what, args) in [
        (
            "no nkey",
            NatsSecurityArgs {
                nats_ca_file: Some(pki.ca_file()),
                ..NatsSecurityArgs::default()
            },
        ),
        (
            "no CA",
            NatsSecurityArgs {
                nats_nkey_file: Some(seed_file.clone()),
                ..NatsSecurityArgs::default()
            },
        ),
        (
            "unknown nkey",
            NatsSecurityArgs {
                nats_ca_file: Some(pki.ca_file()),
                nats_nkey_file: Some(stranger),
                ..NatsSecurityArgs::default()
            },
        ),
    ] {
        refused(&args, &url, what).await;
    }
    worker_deploys_through(nats, url, security).await;
}

#[actix_rt::test]
async fn nats_is_reached_over_mutual_tls_with_the_configured_client_certificate() {
    let pki = Pki::new();
    let nats = LocalNats::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        pki.path("server.pem").display(),
        pki.path("server.key").display(),
        pki.ca_file().display(),
    ))
    .expect("nats-server with mutual tls");
    let url = nats.url().replacen("nats://", "tls://", 1);
    let server_only = NatsSecurityArgs {
        nats_ca_file: Some(pki.ca_file()),
        ..NatsSecurityArgs::default()
    };
    refused(&server_only, &url, "no client certificate").await;
    let security = NatsSecurityArgs {
        nats_client_cert: Some(pki.path("client.pem")),
        nats_client_key: Some(pki.path("client.key")),
        ..server_only
    };
    worker_deploys_through(nats, url, security).await;
}

/// A NATS JWT: `claims` (with `nats` set to `nats`) issued for `subject` and signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64.encode(signature))
}

/// `nats-server` in operator (JWT) mode over TLS, with one JetStream-enabled account, and a
/// credentials file for a user of that account.
fn nats_with_tls_and_jwt(pki: &Pki) -> (LocalNats, PathBuf) {
    let operator = nkeys::KeyPair::new_operator();
    let (account, system, user) = (
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_user(),
    );
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_claims = |jetstream: bool| {
        let storage = if jetstream { -1 } else { 0 };
        serde_json::json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1,
                       "mem_storage": storage, "disk_storage": storage, "streams": -1,
                       "consumer": -1},
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account", "version": 2,
        })
    };
    let account_jwt = nats_jwt(&operator, &account.public_key(), account_claims(true));
    let system_jwt = nats_jwt(&operator, &system.public_key(), account_claims(false));
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                           "type": "user", "version": 2}),
    );
    let creds = pki.path("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().expect("seed")
        ),
    )
    .expect("write creds");
    let nats = LocalNats::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n\
         operator: \"{operator_jwt}\"\n\
         system_account: {}\n\
         resolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{account_jwt}\"\n  {}: \"{system_jwt}\"\n}}\n",
        pki.path("server.pem").display(),
        pki.path("server.key").display(),
        system.public_key(),
        account.public_key(),
        system.public_key(),
    ))
    .expect("nats-server in operator mode");
    (nats, creds)
}

#[actix_rt::test]
async fn nats_is_reached_over_tls_with_a_credentials_file() {
    let pki = Pki::new();
    let (nats, creds) = nats_with_tls_and_jwt(&pki);
    let url = nats.url().replacen("nats://", "tls://", 1);
    let security = NatsSecurityArgs {
        nats_ca_file: Some(pki.ca_file()),
        nats_creds_file: Some(creds),
        ..NatsSecurityArgs::default()
    };
    // Without credentials the server refuses.
    let anonymous = NatsSecurityArgs {
        nats_ca_file: Some(pki.ca_file()),
        ..NatsSecurityArgs::default()
    };
    refused(&anonymous, &url, "no credentials").await;
    worker_deploys_through(nats, url, security).await;
}

#[actix_rt::test]
async fn unusable_nats_security_files_fail_at_start_up_naming_the_setting() {
    let pki = Pki::new();
    let garbage = pki.path("garbage");
    std::fs::write(&garbage, "not a key or a certificate").expect("write");
    let seed = pki.path("user.nk");
    std::fs::write(&seed, nkeys::KeyPair::new_user().seed().expect("seed")).expect("write");
    let absent = pki.path("absent");
    let cases = [
        (
            NatsSecurityArgs {
                nats_ca_file: Some(garbage.clone()),
                ..NatsSecurityArgs::default()
            },
            "NATS_CA_FILE",
        ),
        (
            NatsSecurityArgs {
                nats_ca_file: Some(absent.clone()),
                ..NatsSecurityArgs::default()
            },
            "NATS_CA_FILE",
        ),
        (
            NatsSecurityArgs {
                nats_nkey_file: Some(garbage.clone()),
                ..NatsSecurityArgs::default()
            },
            "NATS_NKEY_FILE",
        ),
        (
            NatsSecurityArgs {
                nats_creds_file: Some(garbage.clone()),
                ..NatsSecurityArgs::default()
            },
            "NATS_CREDS_FILE",
        ),
        (
            NatsSecurityArgs {
                nats_creds_file: Some(garbage.clone()),
                nats_nkey_file: Some(seed.clone()),
                ..NatsSecurityArgs::default()
            },
            "NATS_CREDS_FILE and NATS_NKEY_FILE",
        ),
        (
            NatsSecurityArgs {
                nats_client_cert: Some(pki.path("server.pem")),
                ..NatsSecurityArgs::default()
            },
            "NATS_CLIENT_KEY",
        ),
    ];
    for (args, named) in cases {
        let err = args.connect_options().await.expect_err("refused");
        assert!(err.to_string().contains(named), "{named}: {err}");
    }
    // Through the worker: it refuses to start, with the same message, and nothing runs.
    let env = Env::start().await;
    let mut settings = env.settings();
    settings.nats_security.nats_ca_file = Some(garbage);
    let err = Worker::start(&settings).await.err().expect("refused");
    assert!(err.to_string().contains("NATS_CA_FILE"), "{err}");
}

/// Span names received by the HTTPS collector, and TLS handshakes it refused.
#[derive(Default)]
struct Received {
    spans: Vec<String>,
    failed_handshakes: usize,
}

/// A minimal OTLP/HTTP collector over TLS with `pki`'s server certificate.
async fn start_https_collector(pki: &Pki) -> (SocketAddr, Arc<Mutex<Received>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Received>> = Arc::default();
    let received = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let received = received.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(stream) => serve_otlp(stream, received).await,
                    Err(_) => received.lock().expect("lock").failed_handshakes += 1,
                }
            });
        }
    });
    (addr, seen)
}

/// Answers `POST /v1/traces` requests on one keep-alive connection.
async fn serve_otlp<S>(stream: S, received: Arc<Mutex<Received>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stream = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        if let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) {
            let mut seen = received.lock().expect("lock");
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    seen.spans.extend(scope.spans.into_iter().map(|s| s.name));
                }
            }
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The worker binary exporting to `collector` with `ca` as the collector's trust root.
fn spawn_exporting_worker(env: &Env, collector: SocketAddr, ca: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_deploy-worker"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", env.pg.url())
        .env("NATS_URL", env.nats.url())
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://{collector}"),
        )
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

/// Kills the worker: what it exported is what it has sent so far.
fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[actix_rt::test]
async fn traces_reach_an_https_collector_verified_with_the_configured_ca() {
    let pki = Pki::new();
    let (collector, seen) = start_https_collector(&pki).await;
    let env = Env::start().await;
    let tenant = env.tenant().await;

    // A CA that did not sign the collector's certificate: handshakes fail, nothing arrives,
    // and the worker still deploys.
    let other = Pki::new();
    let worker = spawn_exporting_worker(&env, collector, &other.ca_file());
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("READY", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
    wait_for("a refused handshake", LONG, || async {
        seen.lock().expect("lock").failed_handshakes > 0
    })
    .await;
    stop(worker);
    assert!(seen.lock().expect("lock").spans.is_empty());

    // The right CA: the deploy's spans arrive over TLS.
    let worker = spawn_exporting_worker(&env, collector, &pki.ca_file());
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("READY", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
    wait_for("the persist span at the collector", LONG, || async {
        seen.lock()
            .expect("lock")
            .spans
            .iter()
            .any(|name| name == "persist")
    })
    .await;
    stop(worker);
}
