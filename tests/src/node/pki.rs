//! The node's certificates: one cluster CA, the apiserver's serving
//! certificate, and a client certificate per component, as kubeadm makes
//! them (same names and groups, so RBAC's bootstrap roles apply).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// Who a client certificate names: its user (CN) and groups (O).
#[derive(Clone, Debug)]
pub struct Identity {
    /// The file stem of `<stem>.crt` and `<stem>.key`.
    pub stem: &'static str,
    /// The user name.
    pub user: String,
    /// The group, if any.
    pub group: Option<&'static str>,
}

impl Identity {
    /// The cluster administrator (kubectl, the tests, the controllers).
    pub fn admin() -> Self {
        Self {
            stem: "admin",
            user: "kubernetes-admin".into(),
            group: Some("system:masters"),
        }
    }

    /// The apiserver when it calls the kubelet (logs, exec, port-forward).
    pub fn apiserver_kubelet_client() -> Self {
        Self {
            stem: "apiserver-kubelet-client",
            user: "kube-apiserver-kubelet-client".into(),
            group: Some("system:masters"),
        }
    }

    /// The kubelet of node `node`: `system:node:<node>` in `system:nodes`,
    /// the identity the Node authorizer expects.
    pub fn kubelet(node: &str) -> Self {
        Self {
            stem: "kubelet",
            user: format!("system:node:{node}"),
            group: Some("system:nodes"),
        }
    }
}

/// The files of a cluster CA in a folder.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A fresh CA written to `dir/ca.crt` (and a service-account key pair,
    /// `sa.key`/`sa.pub`).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "cp-observer node CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let sa = KeyPair::generate()?;
        let pki = Self {
            dir: dir.to_owned(),
            ca,
        };
        pki.write("ca.crt", &pki.ca.pem())?;
        pki.write("sa.key", &sa.serialize_pem())?;
        pki.write("sa.pub", &sa.public_key_pem())?;
        Ok(pki)
    }

    /// The path of file `name` in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A serving certificate `<stem>.crt`/`.key` for DNS names and addresses.
    pub fn server(&self, stem: &str, names: &[String]) -> Result<()> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, stem);
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        self.sign(stem, params)
    }

    /// A client certificate for `who`.
    pub fn client(&self, who: &Identity) -> Result<()> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, who.user.as_str());
        if let Some(group) = who.group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        self.sign(who.stem, params)
    }

    fn sign(&self, stem: &str, params: CertificateParams) -> Result<()> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        self.write(&format!("{stem}.crt"), &cert.pem())?;
        self.write(&format!("{stem}.key"), &key.serialize_pem())
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        let path = self.path(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}
