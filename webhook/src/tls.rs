//! Certificates for the HTTPS server: creating a CA and serving certificate (rcgen), reading
//! expiry and names back (x509-parser), and a rustls resolver whose certificate can be swapped
//! while the server runs, so rotation needs no restart.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the private key does not fit the certificate or is unsupported: {0}")]
    Key(String),
}

/// A serving certificate chain and key, plus the CA bundle clients should trust (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: Option<String>,
}

/// What the server needs to know about a certificate to decide on renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_after: SystemTime,
    /// DNS names and IP addresses (as text) the certificate is valid for.
    pub sans: Vec<String>,
}

/// A fresh CA (certificate PEM, key PEM), valid from an hour ago (clock skew) for `validity`.
pub fn generate_ca(now: SystemTime, validity: Duration) -> Result<(String, String), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name("infermesh-webhook-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now, validity);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `sans` (DNS names or IP addresses) signed by the CA.
pub fn issue_serving(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    sans: &[String],
    now: SystemTime,
    validity: Duration,
) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(first_pem(ca_cert_pem), ca_key)?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name = name(
        sans.first()
            .map(String::as_str)
            .unwrap_or("infermesh-webhook"),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, now, validity);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "infermesh");
    dn
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    // Clamped so that absurd flag values cannot overflow the date arithmetic.
    let validity = validity.min(Duration::from_secs(100 * 365 * 86_400));
    let now = OffsetDateTime::from(now);
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
}

/// The first PEM block of a bundle (the signing CA comes first in ours).
fn first_pem(bundle: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    match bundle.find(END) {
        Some(i) => &bundle[..i + END.len()],
        None => bundle,
    }
}

/// Expiry and names of the first certificate in `pem`.
pub fn cert_info(pem: &str) -> Result<CertInfo, CertError> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CertError::Pem {
            what: "certificate",
            detail: e.to_string(),
        })?;
    let cert = block
        .parse_x509()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    sans.extend(ip.map(|i| i.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo { not_after, sans })
}

/// Why a certificate should be replaced now, or `None` while it is good.
pub fn renewal_reason(
    info: &CertInfo,
    now: SystemTime,
    renew_before: Duration,
    required_sans: &[String],
) -> Option<String> {
    if now
        .checked_add(renew_before)
        .is_none_or(|t| info.not_after <= t)
    {
        return Some(format!(
            "it expires at {} (renewing {} before expiry)",
            humantime::format_rfc3339_seconds(info.not_after),
            humantime::format_duration(renew_before)
        ));
    }
    let missing: Vec<&str> = required_sans
        .iter()
        .filter(|s| !info.sans.contains(s))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| format!("it does not cover {}", missing.join(", ")))
}

/// A rustls signing key + chain from PEM, checked to belong together.
pub fn certified_key(bundle: &Bundle) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Pem {
                what: "certificate",
                detail: e.to_string(),
            })?;
    if chain.is_empty() {
        return Err(CertError::Pem {
            what: "certificate",
            detail: "no CERTIFICATE block".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes()).map_err(|e| CertError::Pem {
            what: "private key",
            detail: e.to_string(),
        })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::Key(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| CertError::Key(e.to_string()))?;
    Ok(Arc::new(ck))
}

/// Hands rustls the current certificate; `set` swaps it for every later handshake.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: ArcSwapOption<CertifiedKey>,
}

impl CertResolver {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// TLS server settings over the resolver (ring provider, HTTP/2 and HTTP/1.1 by ALPN).
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn sans() -> Vec<String> {
        vec![
            "infermesh-webhook.infermesh-system.svc".into(),
            "198.18.0.1".into(),
        ]
    }

    #[test]
    fn issued_certificate_carries_names_and_expiry_and_loads() {
        let now = SystemTime::now();
        let (ca, ca_key) = generate_ca(now, 3650 * DAY).expect("ca");
        let (cert, key) = issue_serving(&ca, &ca_key, &sans(), now, 365 * DAY).expect("cert");
        let info = cert_info(&cert).expect("info");
        assert_eq!(info.sans, sans());
        let left = info.not_after.duration_since(now).expect("in the future");
        assert!(left > 364 * DAY && left <= 365 * DAY, "{left:?}");
        let bundle = Bundle {
            cert_pem: cert,
            key_pem: key,
            ca_pem: Some(ca),
        };
        assert!(certified_key(&bundle).is_ok());
    }

    #[test]
    fn signing_with_a_bundle_uses_its_first_ca() {
        let now = SystemTime::now();
        let (new_ca, new_key) = generate_ca(now, DAY).expect("ca");
        let (old_ca, _) = generate_ca(now, DAY).expect("ca");
        let bundle = format!("{new_ca}{old_ca}");
        assert!(issue_serving(&bundle, &new_key, &sans(), now, DAY).is_ok());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let now = SystemTime::now();
        let (ca, ca_key) = generate_ca(now, DAY).expect("ca");
        let (cert, _) = issue_serving(&ca, &ca_key, &sans(), now, DAY).expect("cert");
        let (_, other_key) = issue_serving(&ca, &ca_key, &sans(), now, DAY).expect("cert");
        let err = certified_key(&Bundle {
            cert_pem: cert,
            key_pem: other_key,
            ca_pem: None,
        });
        assert!(matches!(err, Err(CertError::Key(_))), "{err:?}");
        let garbage = Bundle {
            cert_pem: "nope".into(),
            key_pem: "nope".into(),
            ca_pem: None,
        };
        assert!(certified_key(&garbage).is_err());
        assert!(cert_info("nope").is_err());
    }

    #[test]
    fn renewal_when_close_to_expiry_or_missing_a_name() {
        let now = SystemTime::now();
        let info = CertInfo {
            not_after: now + 40 * DAY,
            sans: sans(),
        };
        assert_eq!(renewal_reason(&info, now, 30 * DAY, &sans()), None);
        assert!(renewal_reason(&info, now + 11 * DAY, 30 * DAY, &sans()).is_some());
        let more = vec!["extra.example".to_string()];
        let why = renewal_reason(&info, now, 30 * DAY, &more).expect("missing name");
        assert!(why.contains("extra.example"), "{why}");
    }

    #[test]
    fn resolver_swaps_certificates() {
        let now = SystemTime::now();
        let (ca, ca_key) = generate_ca(now, DAY).expect("ca");
        let load = || {
            let (c, k) = issue_serving(&ca, &ca_key, &sans(), now, DAY).expect("cert");
            certified_key(&Bundle {
                cert_pem: c,
                key_pem: k,
                ca_pem: None,
            })
            .expect("key")
        };
        let r = CertResolver::default();
        assert!(!r.is_loaded());
        let (a, b) = (load(), load());
        r.set(a.clone());
        assert_eq!(
            r.current.load_full().map(|k| k.cert.clone()),
            Some(a.cert.clone())
        );
        r.set(b.clone());
        assert_eq!(
            r.current.load_full().map(|k| k.cert.clone()),
            Some(b.cert.clone())
        );
        assert!(server_config(Arc::new(r)).is_ok());
    }
}
