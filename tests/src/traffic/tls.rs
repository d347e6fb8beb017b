//! TLS for the lab's servers and clients: self-signed certificates that
//! name the lab's addresses, or certificates signed by a fresh lab CA.

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

/// A CA and a server certificate it signed.
#[derive(Debug)]
pub struct CaSigned {
    /// Server and client configurations (the client trusts the server's certificate).
    pub tls: Tls,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate's notAfter, seconds since the epoch.
    pub not_after: i64,
}

impl Tls {
    /// A fresh self-signed certificate valid for `names` (DNS names or IPs).
    pub fn self_signed(names: &[String]) -> Self {
        let ck =
            rcgen::generate_simple_self_signed(names.to_vec()).expect("rcgen makes a certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        Self::from_parts(ck.cert.der().clone(), key)
    }

    /// A server certificate for `names` signed by a fresh CA, valid until
    /// midnight UTC of (year, month, day).
    pub fn ca_signed(names: &[String], (year, month, day): (i32, u8, u8)) -> CaSigned {
        let ca_key = rcgen::KeyPair::generate().expect("a key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cp-observer lab cluster CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("a CA");
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(names.to_vec()).expect("params");
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let not_after = params.not_after.unix_timestamp();
        let cert = params.signed_by(&key, &ca).expect("signed");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        CaSigned {
            tls: Self::from_parts(cert.der().clone(), key),
            ca_pem: ca.pem(),
            not_after,
        }
    }

    fn from_parts(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Self {
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
