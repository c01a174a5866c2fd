//! Development certificates for mTLS in two commands: `lattice certs init` writes a CA, a
//! server certificate for localhost / 127.0.0.1 / ::1 and one client certificate;
//! `lattice certs client` issues more client certificates from that CA.
//!
//! Client certificates carry the name as subject CN and a SPIFFE-style URI SAN
//! (`spiffe://lattice.local/client/NAME`) for the identity gate to map. Keys are ECDSA P-256,
//! written with mode 0600. These are for development; production certificates come from the
//! operator's own PKI.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

pub const TRUST_DOMAIN: &str = "lattice.local";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0} already exists; pass --force to replace the development CA")]
    Exists(PathBuf),
    #[error("invalid name {0:?}: use letters, digits, '.', '-' and '_'")]
    BadName(String),
}

/// Files written by [`init`] and [`client`], relative to the directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";

pub fn init(dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertError> {
    fs::create_dir_all(dir).map_err(|e| CertError::Io(dir.to_path_buf(), e))?;
    let ca_path = dir.join(CA_CERT);
    if ca_path.exists() && !force {
        return Err(CertError::Exists(ca_path));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = dn("Lattice development CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut written = vec![
        write(dir, CA_CERT, ca_cert.pem().as_bytes(), false)?,
        write(dir, CA_KEY, ca_key.serialize_pem().as_bytes(), true)?,
    ];
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    server.distinguished_name = dn("localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_cert = server.signed_by(&server_key, &issuer)?;
    written.push(write(dir, SERVER_CERT, server_cert.pem().as_bytes(), false)?);
    written.push(write(
        dir,
        SERVER_KEY,
        server_key.serialize_pem().as_bytes(),
        true,
    )?);

    written.extend(issue_client(dir, "client", &issuer)?);
    Ok(written)
}

pub fn client(dir: &Path, name: &str) -> Result<Vec<PathBuf>, CertError> {
    let read = |f: &str| {
        let p = dir.join(f);
        fs::read_to_string(&p).map_err(|e| CertError::Io(p, e))
    };
    let key = KeyPair::from_pem(&read(CA_KEY)?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(CA_CERT)?, key)?;
    issue_client(dir, name, &issuer)
}

fn issue_client(dir: &Path, name: &str, issuer: &Issuer<'_, KeyPair>) -> Result<Vec<PathBuf>, CertError> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(CertError::BadName(name.to_string()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(name);
    let uri = format!("spiffe://{TRUST_DOMAIN}/client/{name}");
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer)?;
    Ok(vec![
        write(dir, &format!("{name}.pem"), cert.pem().as_bytes(), false)?,
        write(dir, &format!("{name}.key"), key.serialize_pem().as_bytes(), true)?,
    ])
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Lattice development");
    dn
}

fn write(dir: &Path, name: &str, data: &[u8], secret: bool) -> Result<PathBuf, CertError> {
    let path = dir.join(name);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(&path).map_err(|e| CertError::Io(path.clone(), e))?;
    f.write_all(data).map_err(|e| CertError::Io(path.clone(), e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_client_issue_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), false).unwrap();
        assert_eq!(files.len(), 6);
        assert!(matches!(init(dir.path(), false), Err(CertError::Exists(_))));
        let more = client(dir.path(), "agent-7").unwrap();
        assert!(more[0].ends_with("agent-7.pem"));
        assert!(matches!(client(dir.path(), "../x"), Err(CertError::BadName(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("agent-7.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
