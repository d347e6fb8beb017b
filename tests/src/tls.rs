//! TLS for the lab's servers and clients: one self-signed certificate that
//! names the pod's addresses, trusted by the lab's clients.

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};

/// Server and client configurations that trust each other.
#[derive(Clone, Debug)]
pub struct Tls {
    /// For the lab's HTTPS servers.
    pub server: Arc<ServerConfig>,
    /// For the lab's clients.
    pub client: Arc<ClientConfig>,
}

impl Tls {
    /// A fresh self-signed certificate valid for `names` (DNS names or IPs).
    pub fn self_signed(names: &[String]) -> Self {
        let ck =
            rcgen::generate_simple_self_signed(names.to_vec()).expect("rcgen makes a certificate");
        let cert: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("the certificate and key match");
        let mut roots = RootCertStore::empty();
        roots.add(cert).expect("the certificate parses");
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }
}
