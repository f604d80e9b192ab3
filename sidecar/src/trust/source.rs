//! Where the mesh keys come from: the Secret `infermesh-mesh-key` of the pod's namespace, watched
//! through the Kubernetes API like the mesh ConfigMap, or a file (`--mesh-key-file`) read once.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use infermesh_crds::mesh::{
    MESH_KEY_CURRENT, MESH_KEY_PREVIOUS, MESH_KEY_ROTATED_AT, MESH_KEY_SECRET,
};
use k8s_openapi::api::core::v1::Secret;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

use super::{MeshKeys, Trust};
use crate::named_watch::{Seen, watch_named};

/// Shortest key accepted: HMAC-SHA256 is as strong as its key up to 32 bytes.
const MIN_KEY_BYTES: usize = 16;

/// The keys a file holds: one base64 key per line, the first signing, the second (if any) still
/// accepted. Blank lines and `#` comments are skipped.
pub(crate) fn keys_from_file(path: &Path) -> Result<MeshKeys, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the mesh key file {}: {e}", path.display()))?;
    let keys: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            STANDARD
                .decode(l)
                .map_err(|e| format!("a line of {} is not base64: {e}", path.display()))
        })
        .collect::<Result<_, _>>()?;
    let (current, previous) = match keys.as_slice() {
        [c] => (c, None),
        [c, p] => (c, Some(p.as_slice())),
        _ => {
            return Err(format!(
                "{} must hold one or two base64 keys, one per line; it holds {}",
                path.display(),
                keys.len()
            ));
        }
    };
    check_length(current)?;
    if let Some(p) = previous {
        check_length(p)?;
    }
    Ok(MeshKeys::new(current, previous, None))
}

fn check_length(key: &[u8]) -> Result<(), String> {
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "a mesh key of {} bytes is too short; use at least {MIN_KEY_BYTES} random bytes (e.g. `head -c 32 /dev/urandom | base64`)",
            key.len()
        ));
    }
    Ok(())
}

/// The keys the operator's Secret holds, if it is of the expected form.
fn keys_from_secret(secret: &Secret) -> Result<MeshKeys, String> {
    let data = secret.data.as_ref();
    let get = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
    let current = get(MESH_KEY_CURRENT).ok_or(format!("it has no key {MESH_KEY_CURRENT:?}"))?;
    check_length(current)?;
    let previous = get(MESH_KEY_PREVIOUS).filter(|p| p.len() >= MIN_KEY_BYTES);
    let rotated_at = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MESH_KEY_ROTATED_AT))
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    Ok(MeshKeys::new(current, previous, rotated_at))
}

/// Watches the namespace's mesh key Secret until shutdown. A deleted or unreadable Secret leaves
/// the last keys in force: the operator mints a new one, and until then markers keep proving.
pub(crate) async fn watch_secret(
    namespace: String,
    trust: Arc<Trust>,
    shutdown: watch::Receiver<bool>,
) {
    let source = format!("secret {namespace}/{MESH_KEY_SECRET}");
    watch_named::<Secret>(&namespace, MESH_KEY_SECRET, shutdown, |seen| match seen {
        Seen::Found(secret) => match keys_from_secret(&secret) {
            Ok(keys) => {
                trust.set(keys);
                tracing::info!(%source, "mesh key loaded");
            }
            Err(why) => {
                tracing::error!(%source, why, "the mesh key Secret is not usable; keeping the last keys");
            }
        },
        Seen::Missing | Seen::Forbidden if !trust.has_keys() => {
            tracing::info!(%source, "no mesh key to read yet (the operator mints it with the namespace's first ModelService): routed markers are sent unsigned and peers route such requests again");
        }
        Seen::Missing | Seen::Forbidden | Seen::Deleted => {
            tracing::warn!(%source, "the mesh key Secret is gone or unreadable; keeping the last keys");
        }
        Seen::Failed(e) => {
            tracing::warn!(%source, error = %e, "mesh key watch failed; retrying with backoff");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::time::SystemTime;

    fn rfc3339(t: SystemTime) -> String {
        humantime::format_rfc3339_seconds(t).to_string()
    }

    #[test]
    fn a_key_file_holds_one_or_two_long_enough_base64_keys() {
        let dir = std::env::temp_dir().join(format!("infermesh-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let k32 = STANDARD.encode([7u8; 32]);
        std::fs::write(&path, format!("# mesh key\n{k32}\n")).unwrap();
        assert!(keys_from_file(&path).unwrap().previous.is_none());
        std::fs::write(&path, format!("{k32}\n{k32}\n")).unwrap();
        assert!(keys_from_file(&path).unwrap().previous.is_some());
        std::fs::write(&path, STANDARD.encode([7u8; 8])).unwrap();
        assert!(keys_from_file(&path).err().unwrap().contains("too short"));
        std::fs::write(&path, "not base64!").unwrap();
        assert!(keys_from_file(&path).err().unwrap().contains("not base64"));
        std::fs::write(&path, "").unwrap();
        assert!(keys_from_file(&path).err().unwrap().contains("holds 0"));
        assert!(
            keys_from_file(&dir.join("absent"))
                .err()
                .unwrap()
                .contains("cannot read")
        );
    }

    #[test]
    fn the_secret_gives_current_previous_and_rotation_time() {
        let mut s = Secret::default();
        assert!(keys_from_secret(&s).is_err(), "no data");
        let now = SystemTime::now();
        s.data = Some(
            [
                (MESH_KEY_CURRENT.to_string(), ByteString(vec![1; 32])),
                (MESH_KEY_PREVIOUS.to_string(), ByteString(vec![2; 32])),
            ]
            .into(),
        );
        s.metadata.annotations = Some([(MESH_KEY_ROTATED_AT.to_string(), rfc3339(now))].into());
        let keys = keys_from_secret(&s).unwrap();
        assert!(keys.previous.is_some());
        let at = keys.rotated_at.expect("rotation time read");
        assert!(at <= now && now.duration_since(at).unwrap().as_secs() < 2);
    }
}
