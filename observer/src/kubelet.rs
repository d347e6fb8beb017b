//! The kubelet serving certificate check.
//!
//! The Kubernetes page warns that the apiserver does not verify the
//! kubelet's serving certificate unless `--kubelet-certificate-authority` is
//! set, and that this only works if the kubelet's certificate is signed by a
//! CA the apiserver trusts. The agent connects to the local kubelet port,
//! takes the certificate the kubelet presents, and verifies it the way the
//! apiserver would: against the cluster CA, for the node's address. The
//! result and the expiry are metrics.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::WebPkiServerVerifier,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

/// The cluster CA as a pod sees it.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// The last check's outcome, for the metrics.
#[derive(Debug, Default)]
pub struct Status {
    /// 1 verified, 0 not verified, -1 not checked (unreachable, no CA).
    pub verified: AtomicI64,
    /// `notAfter` of the kubelet's certificate (0 when unknown).
    pub expiry: AtomicI64,
    /// Checks that could not reach the kubelet or read its certificate.
    pub errors: AtomicU64,
}

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    /// The chain verifies against the CA for the node's address.
    pub verified: Result<(), String>,
    /// `notAfter`, seconds since the epoch.
    pub expiry: i64,
}

/// Connects to `kubelet`, reads its certificate chain, and verifies it
/// against `ca_pem` for the name `kubelet.ip()`.
pub fn check(kubelet: SocketAddr, ca_pem: &[u8]) -> Result<Finding, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(Capture {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let name = ServerName::IpAddress(kubelet.ip().into());
    let mut conn =
        ClientConnection::new(Arc::new(config), name.clone()).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&kubelet, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the kubelet at {kubelet}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("TLS handshake with the kubelet at {kubelet} failed: {e}"))?;
    }
    conn.send_close_notify();
    // The certificate is in hand: a close the kubelet does not take
    // changes nothing about the check, so it is only noted.
    if let Err(e) = conn.complete_io(&mut sock) {
        tracing::debug!("closing the TLS connection to the kubelet at {kubelet}: {e}");
    }
    let chain = capture.chain.lock().expect("lock").clone();
    let leaf = chain
        .first()
        .ok_or("the kubelet presented no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("unreadable kubelet certificate: {e}"))?;
    let expiry = cert.validity().not_after.timestamp();

    let mut roots = RootCertStore::empty();
    let mut added = 0;
    for der in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem) {
        let der: CertificateDer<'static> = der.map_err(|e| format!("unreadable CA file: {e}"))?;
        roots
            .add(der)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
        added += 1;
    }
    if added == 0 {
        return Err("the CA file holds no certificate".into());
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let verified = verifier
        .verify_server_cert(leaf, &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string());
    Ok(Finding { verified, expiry })
}

/// A verifier that accepts anything and keeps the chain: the check wants
/// the certificate even when it does not verify.
#[derive(Debug)]
struct Capture {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().expect("lock") = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Runs the check now and every `every`, until `stop` is dropped; records
/// each outcome in `status`. `target` gives the kubelet's address at the
/// time of the check (discovery may learn it later).
pub fn spawn(
    target: impl Fn() -> Option<SocketAddr> + Send + 'static,
    ca: std::path::PathBuf,
    every: Duration,
    status: Arc<Status>,
    stop: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    status.verified.store(-1, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("kubelet-cert".into())
        .spawn(move || {
            let mut wait = Duration::ZERO;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
                wait = every;
                let outcome = match (target(), std::fs::read(&ca)) {
                    (None, _) => Err("no node address known yet".to_owned()),
                    (_, Err(e)) => Err(format!("cannot read the CA {}: {e}", ca.display())),
                    (Some(kubelet), Ok(pem)) => check(kubelet, &pem),
                };
                match outcome {
                    Ok(f) => {
                        status.expiry.store(f.expiry, Ordering::Relaxed);
                        status.verified.store(i64::from(f.verified.is_ok()), Ordering::Relaxed);
                        if let Err(why) = f.verified {
                            tracing::warn!("the kubelet's serving certificate does not verify against the cluster CA: {why}");
                        }
                    }
                    Err(e) => {
                        status.errors.fetch_add(1, Ordering::Relaxed);
                        status.verified.store(-1, Ordering::Relaxed);
                        tracing::warn!("kubelet certificate check: {e}");
                    }
                }
                // Retry sooner while nothing could be checked.
                if status.verified.load(Ordering::Relaxed) < 0 {
                    wait = every.min(Duration::from_secs(5));
                }
            }
        })
        .expect("a thread can be spawned")
}
