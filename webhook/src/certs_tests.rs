//! Certificate planning (creation, renewal, CA rollover) and the on-disk source.

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn policy() -> CertPolicy {
    CertPolicy {
        sans: vec!["infermesh-webhook.infermesh-system.svc".into()],
        validity: 365 * DAY,
        ca_validity: 3650 * DAY,
        renew_before: 30 * DAY,
    }
}

fn ca_count(s: &Stored) -> usize {
    s.ca_pem.matches("BEGIN CERTIFICATE").count()
}

#[test]
fn creates_then_keeps_then_renews_before_expiry() {
    let now = SystemTime::now();
    let first = plan(None, &policy(), now).expect("plan").expect("created");
    assert_eq!(
        tls::cert_info(&first.cert_pem).expect("info").sans,
        policy().sans
    );
    assert_eq!(
        plan(Some(&first), &policy(), now).expect("plan"),
        None,
        "fresh cert is kept"
    );
    assert_eq!(
        plan(Some(&first), &policy(), now + 300 * DAY).expect("plan"),
        None
    );

    let renewed = plan(Some(&first), &policy(), now + 340 * DAY)
        .expect("plan")
        .expect("renewed");
    assert_eq!(renewed.ca_pem, first.ca_pem, "same CA signs the renewal");
    assert_ne!(renewed.cert_pem, first.cert_pem);
    let left = tls::cert_info(&renewed.cert_pem)
        .expect("info")
        .not_after
        .duration_since(now)
        .expect("future");
    assert!(
        left > 700 * DAY,
        "renewal is valid a year from its issue: {left:?}"
    );
}

#[test]
fn new_names_or_a_broken_cert_get_a_new_cert() {
    let now = SystemTime::now();
    let first = plan(None, &policy(), now).expect("plan").expect("created");
    let mut more = policy();
    more.sans.push("198.18.0.1".into());
    let next = plan(Some(&first), &more, now)
        .expect("plan")
        .expect("reissued");
    assert_eq!(
        tls::cert_info(&next.cert_pem).expect("info").sans,
        more.sans
    );

    let broken = Stored {
        cert_pem: "garbage".into(),
        ..first.clone()
    };
    assert!(plan(Some(&broken), &policy(), now).expect("plan").is_some());
    let mismatched = Stored {
        key_pem: next.key_pem.clone(),
        ..first.clone()
    };
    assert!(
        plan(Some(&mismatched), &policy(), now)
            .expect("plan")
            .is_some()
    );
}

#[test]
fn ca_rollover_keeps_the_old_ca_trusted() {
    let now = SystemTime::now();
    let first = plan(None, &policy(), now).expect("plan").expect("created");
    let later = now + 3650 * DAY - 300 * DAY;
    let next = plan(Some(&first), &policy(), later)
        .expect("plan")
        .expect("rolled");
    assert_ne!(next.ca_key_pem, first.ca_key_pem);
    assert_eq!(ca_count(&next), 2);
    assert!(next.ca_pem.ends_with(&first.ca_pem));
    // Once the new CA is in place it is kept.
    assert_eq!(plan(Some(&next), &policy(), later).expect("plan"), None);
}

#[test]
fn stored_round_trips_through_secret_data() {
    let s = plan(None, &policy(), SystemTime::now())
        .expect("plan")
        .expect("created");
    assert_eq!(Stored::from_map(&s.to_map()), Some(s.clone()));
    let mut partial = s.to_map();
    partial.remove(CA_KEY);
    assert_eq!(Stored::from_map(&partial), None);
}

#[tokio::test]
async fn managed_dir_creates_once_and_reloads() {
    let dir = std::env::temp_dir().join(format!("infermesh-webhook-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let resolver = Arc::new(CertResolver::default());
    let mgr = CertManager {
        source: CertSource::ManagedDir { dir: dir.clone() },
        policy: policy(),
        webhook_config: None,
        resolver: resolver.clone(),
    };
    mgr.refresh().await.expect("first refresh");
    assert!(resolver.is_loaded());
    let ca = std::fs::read_to_string(dir.join(CA_CRT)).expect("ca written");
    mgr.refresh().await.expect("second refresh");
    assert_eq!(
        std::fs::read_to_string(dir.join(CA_CRT)).expect("ca"),
        ca,
        "kept, not regenerated"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
