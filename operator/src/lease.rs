//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run and one
//! reconciles. The holder renews every `duration / 3`; a lease not renewed for `duration` may be
//! taken over. Writes use the Lease's resourceVersion, so two candidates cannot both win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};

/// What a candidate should do with the lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease object yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Wait { holder: String },
}

/// Decides from the current lease spec (`None`: no Lease object) whether `me` may hold it at `now`.
pub fn decide(current: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = current else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    match renewed {
        Some(t)
            if t.0
                .saturating_add(duration)
                .is_ok_and(|expiry| expiry > now) =>
        {
            Decision::Wait {
                holder: holder.to_string(),
            }
        }
        _ => Decision::TakeOver,
    }
}

/// The spec `me` writes for `decision` (not for `Wait`).
pub fn next_spec(
    current: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1);
    let base = current.cloned().unwrap_or_default();
    let transitions = base.lease_transitions.unwrap_or(0);
    match decision {
        Decision::Renew => LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(now)),
            ..base
        },
        _ => LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if matches!(decision, Decision::Create) {
                0
            } else {
                transitions.saturating_add(1)
            }),
            ..base
        },
    }
}

/// A candidate for one Lease.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// Outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Holding,
    HeldBy(String),
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// One acquire-or-renew round trip.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let existing = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        if let Decision::Wait { holder } = decision {
            return Ok(Attempt::HeldBy(holder));
        }
        let spec = next_spec(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &decision,
            &self.identity,
            self.duration,
            now,
        );
        match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await?;
            }
            Some(mut lease) => {
                // resourceVersion from the read makes this a compare-and-swap.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(Attempt::Holding)
    }

    /// Waits until this candidate holds the lease, retrying every `retry`.
    pub async fn acquire(&self, retry: Duration) {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Holding) => return,
                Ok(Attempt::HeldBy(holder)) => {
                    if holder != last_holder {
                        tracing::info!(%holder, lease = %self.name, "waiting for the leader lease");
                        last_holder = holder;
                    }
                }
                Err(e) if is_conflict(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "leader lease acquire failed")
                }
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews every `duration / 3`; returns when leadership is lost (another holder, or no
    /// successful renewal for a whole lease duration).
    pub async fn hold(&self) {
        let period = self.duration / 3;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Holding) => last_ok = tokio::time::Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    tracing::error!(%holder, "leader lease taken by another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader lease renewal failed");
                    if last_ok.elapsed() >= self.duration {
                        tracing::error!("leader lease not renewed for a whole lease duration");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up (if still ours) so another replica takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "releasing the leader lease failed; it expires by itself");
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn held_by(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "a", at(100)), Decision::Create);
    }

    #[test]
    fn own_lease_is_renewed_even_if_late() {
        assert_eq!(
            decide(Some(&held_by("a", 0, 15)), "a", at(100)),
            Decision::Renew
        );
    }

    #[test]
    fn live_foreign_lease_is_respected_and_expired_one_taken() {
        let spec = held_by("b", 100, 15);
        assert_eq!(
            decide(Some(&spec), "a", at(110)),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(decide(Some(&spec), "a", at(116)), Decision::TakeOver);
    }

    #[test]
    fn released_lease_is_taken_at_once() {
        let mut spec = held_by("b", 100, 15);
        spec.holder_identity = None;
        assert_eq!(decide(Some(&spec), "a", at(101)), Decision::TakeOver);
    }

    #[test]
    fn takeover_counts_a_transition_and_renew_keeps_acquire_time() {
        let spec = held_by("b", 100, 15);
        let taken = next_spec(
            Some(&spec),
            &Decision::TakeOver,
            "a",
            Duration::from_secs(15),
            at(200),
        );
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(200))));
        let renewed = next_spec(
            Some(&taken),
            &Decision::Renew,
            "a",
            Duration::from_secs(15),
            at(205),
        );
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(200))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(205))));
        assert_eq!(renewed.lease_transitions, Some(3));
    }
}
