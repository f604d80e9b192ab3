//! Proof between sidecars that a request was routed by a sidecar of this namespace.
//!
//! A sidecar that routed a request to a meshed peer marks it `x-infermesh-routed:
//! <service>/<variant>;hop=<n>;t=<unix seconds>;sig=<proof>`, and the peer's sidecar delivers it
//! to its local model without routing again. Without a proof any pod that can reach a pod's
//! inbound port could name a variant and skip routing, the concurrency limit and the retry budget.
//! The proof is HMAC-SHA256 over the target and the time, with the namespace's mesh key: a Secret
//! the operator mints (`infermesh-mesh-key`), readable by the namespace's service accounts only,
//! so a pod of another namespace cannot forge one. It is not a defence against an observer on the
//! path, who could replay a marker within [`MAX_SKEW`]; that needs mutual TLS.
//!
//! A marker that does not prove out is not an error: the request is routed like any other (and
//! marked anew, with this sidecar's key). `hop` bounds how often that can happen in a row, so
//! sidecars that disagree on the key (one has not read a rotation yet) can never pass a request
//! back and forth forever.

pub(crate) mod source;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use ring::hmac;

/// How far a marker's time may be from this sidecar's clock and still prove a request: covers
/// clock skew between nodes, and bounds how long a captured marker could be replayed.
pub(crate) const MAX_SKEW: u64 = 300;
/// How many sidecars in a row may route one request. The first routes it (hop 1); a peer that
/// cannot verify the marker routes it again (hop 2)... A request arriving with this many hops is
/// refused as a loop.
pub(crate) const MAX_HOPS: u32 = 4;
/// After the operator rotates the key, sidecars keep signing with the previous one this long, so
/// that peers which have not read the new Secret yet still accept their markers (every sidecar
/// accepts both).
pub(crate) const ROTATION_GRACE: Duration = Duration::from_secs(60);

/// The keys of one namespace: the one markers are signed with now, and every one accepted.
pub(crate) struct MeshKeys {
    current: hmac::Key,
    previous: Option<hmac::Key>,
    /// When `current` was minted: until [`ROTATION_GRACE`] after it, `previous` signs.
    rotated_at: Option<SystemTime>,
}

impl MeshKeys {
    /// `current` signs (after the grace period since `rotated_at`); `previous` is also accepted.
    pub(crate) fn new(
        current: &[u8],
        previous: Option<&[u8]>,
        rotated_at: Option<SystemTime>,
    ) -> Self {
        Self {
            current: hmac::Key::new(hmac::HMAC_SHA256, current),
            previous: previous.map(|p| hmac::Key::new(hmac::HMAC_SHA256, p)),
            rotated_at,
        }
    }

    fn signing(&self, now: SystemTime) -> &hmac::Key {
        match (&self.previous, self.rotated_at) {
            (Some(previous), Some(at)) if now < at + ROTATION_GRACE => previous,
            _ => &self.current,
        }
    }

    fn accepts(&self, message: &[u8], sig: &[u8]) -> bool {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|k| hmac::verify(k, message, sig).is_ok())
    }
}

/// Why a marker was not honoured: the `reason` label of `infermesh_routed_marker_refused`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `t` and `sig`: sent by a sidecar without a key, or by hand.
    Unsigned,
    /// Not of the marker's form.
    Malformed,
    /// `t` further than [`MAX_SKEW`] from this sidecar's clock.
    Expired,
    /// The proof does not hold under any key this sidecar has.
    BadProof,
    /// This sidecar has no key to check it with.
    NoKey,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Malformed => "malformed",
            Refusal::Expired => "expired",
            Refusal::BadProof => "bad-proof",
            Refusal::NoKey => "no-key",
        }
    }
}

/// A marker as received: the target it names and the hop it came with, and whether its proof
/// held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Checked<'a> {
    /// `<service>/<variant>`.
    pub(crate) target: &'a str,
    pub(crate) hop: u32,
    pub(crate) proof: Result<(), Refusal>,
}

/// The namespace's mesh keys as this sidecar last read them; none until then.
#[derive(Default)]
pub(crate) struct Trust {
    keys: ArcSwapOption<MeshKeys>,
}

impl Trust {
    pub(crate) fn set(&self, keys: MeshKeys) {
        self.keys.store(Some(Arc::new(keys)));
    }

    pub(crate) fn has_keys(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The marker for a request routed to `target` (`<service>/<variant>`) as hop `hop`: signed
    /// when this sidecar has a key (without one, peers route the request again).
    pub(crate) fn mark(&self, target: &str, hop: u32) -> HeaderValue {
        self.mark_at(target, hop, SystemTime::now())
    }

    fn mark_at(&self, target: &str, hop: u32, now: SystemTime) -> HeaderValue {
        let mut v = format!("{target};hop={hop}");
        if let Some(keys) = &*self.keys.load() {
            let t = unix(now);
            let tag = hmac::sign(keys.signing(now), message(target, t).as_bytes());
            v.push_str(&format!(
                ";t={t};sig={}",
                URL_SAFE_NO_PAD.encode(tag.as_ref())
            ));
        }
        // Targets are service and variant names (DNS labels), checked when the config was
        // compiled; the rest is ASCII this function wrote.
        HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    /// Reads a peer's marker and checks its proof.
    pub(crate) fn check<'a>(&self, marker: &'a HeaderValue) -> Result<Checked<'a>, Refusal> {
        self.check_at(marker, SystemTime::now())
    }

    fn check_at<'a>(
        &self,
        marker: &'a HeaderValue,
        now: SystemTime,
    ) -> Result<Checked<'a>, Refusal> {
        let text = marker.to_str().map_err(|_| Refusal::Malformed)?;
        let mut parts = text.split(';');
        let target = parts.next().unwrap_or_default().trim();
        let (mut hop, mut t, mut sig) = (None, None, None);
        for p in parts {
            match p.trim().split_once('=') {
                Some(("hop", v)) => hop = v.parse::<u32>().ok(),
                Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| Refusal::Malformed)?),
                Some(("sig", v)) => sig = Some(v),
                // Parameters a newer release may add.
                Some(_) => {}
                None => return Err(Refusal::Malformed),
            }
        }
        if !target.contains('/') {
            return Err(Refusal::Malformed);
        }
        // A marker without a hop count comes from a sidecar of an older release: its first hop.
        let hop = hop.unwrap_or(1);
        let proof = match (t, sig) {
            (None, None) => Err(Refusal::Unsigned),
            (Some(t), Some(sig)) => self.prove(target, t, sig, now),
            _ => Err(Refusal::Malformed),
        };
        Ok(Checked { target, hop, proof })
    }

    fn prove(&self, target: &str, t: u64, sig: &str, now: SystemTime) -> Result<(), Refusal> {
        let Some(keys) = &*self.keys.load() else {
            return Err(Refusal::NoKey);
        };
        if unix(now).abs_diff(t) > MAX_SKEW {
            return Err(Refusal::Expired);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| Refusal::Malformed)?;
        if keys.accepts(message(target, t).as_bytes(), &sig) {
            Ok(())
        } else {
            Err(Refusal::BadProof)
        }
    }
}

/// What is signed: the target and the time. The hop is not: changing it gains nothing but a
/// refusal.
fn message(target: &str, t: u64) -> String {
    format!("{target}\n{t}")
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
