//! Where the serving certificate comes from and how it stays fresh.
//!
//! Sources, in order of precedence (chosen by flags): certificate files (e.g. a mounted
//! cert-manager Secret), a user-provided `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`,
//! optional `ca.crt`), or a self-managed CA + serving certificate kept in a Secret (or, without a
//! cluster, a directory). Self-managed: created if absent (replicas race on create; the loser reads
//! the winner's), renewed before expiry with optimistic concurrency on the Secret's
//! resourceVersion. Every refresh loads the result into the TLS resolver and keeps the
//! MutatingWebhookConfiguration's `caBundle` in step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::tls::{self, Bundle, CertError, CertResolver};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("Kubernetes API call for {what} failed: {source}")]
    Kube { what: String, source: kube::Error },
    #[error(
        "Secret {0} lacks key {1}: provide a cert-manager style Secret (tls.crt, tls.key, ca.crt)"
    )]
    MissingKey(String, &'static str),
    #[error("Secret {0} kept changing under concurrent writers; will retry")]
    Contended(String),
}

#[derive(Clone)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
    },
    UserSecret {
        api: Api<Secret>,
        namespace: String,
        name: String,
    },
    ManagedSecret {
        api: Api<Secret>,
        namespace: String,
        name: String,
    },
    ManagedDir {
        dir: PathBuf,
    },
}

/// Lifetimes and names for self-managed certificates.
#[derive(Clone, Debug)]
pub struct CertPolicy {
    pub sans: Vec<String>,
    pub validity: Duration,
    pub ca_validity: Duration,
    pub renew_before: Duration,
}

/// A self-managed CA and serving certificate as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Signing CA first, then older CAs still trusted during a CA rollover.
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

impl Stored {
    fn bundle(&self) -> Bundle {
        Bundle {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            ca_pem: Some(self.ca_pem.clone()),
        }
    }

    fn from_map(m: &BTreeMap<String, Vec<u8>>) -> Option<Self> {
        let get = |k: &str| m.get(k).and_then(|v| String::from_utf8(v.clone()).ok());
        Some(Self {
            ca_pem: get(CA_CRT)?,
            ca_key_pem: get(CA_KEY)?,
            cert_pem: get(TLS_CRT)?,
            key_pem: get(TLS_KEY)?,
        })
    }

    fn to_map(&self) -> BTreeMap<String, Vec<u8>> {
        [
            (CA_CRT, &self.ca_pem),
            (CA_KEY, &self.ca_key_pem),
            (TLS_CRT, &self.cert_pem),
            (TLS_KEY, &self.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone().into_bytes()))
        .collect()
    }
}

/// What the stored state should become: `None` keeps it. Pure, so rotation is unit-tested.
pub fn plan(
    existing: Option<&Stored>,
    p: &CertPolicy,
    now: SystemTime,
) -> Result<Option<Stored>, CertError> {
    let fresh_ca = || -> Result<Stored, CertError> {
        let (ca_pem, ca_key_pem) = tls::generate_ca(now, p.ca_validity)?;
        let (cert_pem, key_pem) =
            tls::issue_serving(&ca_pem, &ca_key_pem, &p.sans, now, p.validity)?;
        Ok(Stored {
            ca_pem,
            ca_key_pem,
            cert_pem,
            key_pem,
        })
    };
    let Some(old) = existing else {
        return fresh_ca().map(Some);
    };
    let Ok(ca) = tls::cert_info(&old.ca_pem) else {
        return fresh_ca().map(Some);
    };
    // The CA must outlive any certificate it signs now.
    if tls::renewal_reason(&ca, now, p.validity.saturating_add(p.renew_before), &[]).is_some() {
        let mut next = fresh_ca()?;
        if ca.not_after > now {
            next.ca_pem = format!("{}{}", next.ca_pem, old.ca_pem);
        }
        tracing::info!("rotating the webhook CA (the old one stays trusted until it expires)");
        return Ok(Some(next));
    }
    let reason = match tls::cert_info(&old.cert_pem) {
        Ok(info) => tls::renewal_reason(&info, now, p.renew_before, &p.sans),
        Err(e) => Some(format!("it cannot be read: {e}")),
    }
    .or_else(|| {
        tls::certified_key(&old.bundle())
            .err()
            .map(|e| e.to_string())
    });
    let Some(reason) = reason else {
        return Ok(None);
    };
    tracing::info!(%reason, "issuing a new serving certificate");
    let (cert_pem, key_pem) =
        tls::issue_serving(&old.ca_pem, &old.ca_key_pem, &p.sans, now, p.validity)?;
    Ok(Some(Stored {
        cert_pem,
        key_pem,
        ..old.clone()
    }))
}

pub struct CertManager {
    pub source: CertSource,
    pub policy: CertPolicy,
    /// MutatingWebhookConfiguration whose `caBundle` to keep in step, if any.
    pub webhook_config: Option<(kube::Client, String)>,
    pub resolver: Arc<CertResolver>,
}

impl CertManager {
    /// Obtains the current certificate (creating or renewing it when self-managed), loads it into
    /// the resolver and patches the caBundle. Returns the serving certificate's expiry.
    pub async fn refresh(&self) -> Result<SystemTime, CertsError> {
        let bundle = self.obtain().await?;
        let key = tls::certified_key(&bundle)?;
        let info = tls::cert_info(&bundle.cert_pem)?;
        self.resolver.set(key);
        if let (Some(ca), Some((client, name))) = (&bundle.ca_pem, &self.webhook_config) {
            patch_ca_bundle(client, name, ca).await?;
        }
        Ok(info.not_after)
    }

    async fn obtain(&self) -> Result<Bundle, CertsError> {
        match &self.source {
            CertSource::Files { cert, key, ca } => Ok(Bundle {
                cert_pem: read(cert).await?,
                key_pem: read(key).await?,
                ca_pem: match ca {
                    Some(p) => Some(read(p).await?),
                    None => None,
                },
            }),
            CertSource::UserSecret {
                api,
                namespace,
                name,
            } => {
                let s = api
                    .get(name)
                    .await
                    .map_err(|e| kube_err(format!("Secret {namespace}/{name}"), e))?;
                let data = s.data.unwrap_or_default();
                let get = |k: &'static str| {
                    data.get(k)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .ok_or_else(|| CertsError::MissingKey(format!("{namespace}/{name}"), k))
                };
                Ok(Bundle {
                    cert_pem: get(TLS_CRT)?,
                    key_pem: get(TLS_KEY)?,
                    ca_pem: get(CA_CRT).ok(),
                })
            }
            CertSource::ManagedSecret {
                api,
                namespace,
                name,
            } => self.managed_secret(api, namespace, name).await,
            CertSource::ManagedDir { dir } => {
                let path = |k: &str| dir.join(k);
                let mut m = BTreeMap::new();
                for k in [CA_CRT, CA_KEY, TLS_CRT, TLS_KEY] {
                    if let Ok(v) = tokio::fs::read(path(k)).await {
                        m.insert(k.to_string(), v);
                    }
                }
                let old = Stored::from_map(&m);
                let next = match (plan(old.as_ref(), &self.policy, SystemTime::now())?, old) {
                    (Some(next), _) => next,
                    (None, Some(old)) => return Ok(old.bundle()),
                    (None, None) => {
                        return Err(CertError::Parse("no certificate planned".into()).into());
                    }
                };
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| io_err(dir, e))?;
                for (k, v) in next.to_map() {
                    tokio::fs::write(path(&k), v)
                        .await
                        .map_err(|e| io_err(&path(&k), e))?;
                }
                Ok(next.bundle())
            }
        }
    }

    async fn managed_secret(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
    ) -> Result<Bundle, CertsError> {
        let what = || format!("Secret {namespace}/{name}");
        for _ in 0..5 {
            let existing = api.get_opt(name).await.map_err(|e| kube_err(what(), e))?;
            let stored = existing.as_ref().and_then(|s| {
                let m = s
                    .data
                    .as_ref()?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect();
                Stored::from_map(&m)
            });
            let Some(next) = plan(stored.as_ref(), &self.policy, SystemTime::now())? else {
                if let Some(s) = stored {
                    return Ok(s.bundle());
                }
                continue;
            };
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    resource_version: existing
                        .as_ref()
                        .and_then(|s| s.metadata.resource_version.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".into(),
                        "infermesh-webhook".into(),
                    )])),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(
                    next.to_map()
                        .into_iter()
                        .map(|(k, v)| (k, ByteString(v)))
                        .collect(),
                ),
                ..Default::default()
            };
            let res = match existing {
                None => api.create(&PostParams::default(), &secret).await,
                Some(_) => api.replace(name, &PostParams::default(), &secret).await,
            };
            match res {
                Ok(_) => return Ok(next.bundle()),
                // Another replica wrote first: read and use what it wrote.
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                    tracing::info!(secret = %what(), "another writer updated the certificate Secret; re-reading");
                }
                Err(e) => return Err(kube_err(what(), e)),
            }
        }
        Err(CertsError::Contended(what()))
    }
}

/// Sets `caBundle` on every webhook of the configuration that does not carry it yet.
pub async fn patch_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<(), CertsError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = || format!("MutatingWebhookConfiguration {name}");
    let Some(cfg) = api.get_opt(name).await.map_err(|e| kube_err(what(), e))? else {
        tracing::warn!(
            config = name,
            "MutatingWebhookConfiguration not found; caBundle not set yet (will retry)"
        );
        return Ok(());
    };
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let mut ops = vec![];
    for (i, w) in cfg.webhooks.iter().flatten().enumerate() {
        if w.client_config.ca_bundle.as_ref() != Some(&want) {
            // Guard each index with its name so a concurrent reorder cannot misplace the bundle.
            ops.push(
                json!({ "op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name }),
            );
            ops.push(json!({ "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want }));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(json!(ops))
        .map_err(|e| CertsError::Cert(CertError::Parse(e.to_string())))?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(|e| kube_err(what(), e))?;
    tracing::info!(config = name, "caBundle updated");
    Ok(())
}

async fn read(p: &PathBuf) -> Result<String, CertsError> {
    tokio::fs::read_to_string(p).await.map_err(|e| io_err(p, e))
}

fn io_err(p: &std::path::Path, source: std::io::Error) -> CertsError {
    CertsError::Io {
        path: p.display().to_string(),
        source,
    }
}

fn kube_err(what: String, source: kube::Error) -> CertsError {
    CertsError::Kube { what, source }
}

#[cfg(test)]
#[path = "certs_tests.rs"]
mod tests;
