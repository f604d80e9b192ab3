use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn trust(current: &[u8], previous: Option<&[u8]>, rotated_at: Option<SystemTime>) -> Trust {
    let t = Trust::default();
    t.set(MeshKeys::new(current, previous, rotated_at));
    t
}

const NOW: u64 = 1_800_000_000;

#[test]
fn a_marker_signed_with_the_namespace_key_proves_its_target_and_hop() {
    let t = trust(b"key-one", None, None);
    let m = t.mark_at("llm/canary", 2, at(NOW));
    let checked = t.check_at(&m, at(NOW + 1)).unwrap();
    assert_eq!(checked.target, "llm/canary");
    assert_eq!(checked.hop, 2);
    assert_eq!(checked.proof, Ok(()));
}

#[test]
fn another_namespaces_key_or_a_changed_target_does_not_prove() {
    let ours = trust(b"key-one", None, None);
    let theirs = trust(b"key-two", None, None);
    let forged = theirs.mark_at("llm/canary", 1, at(NOW));
    assert_eq!(
        ours.check_at(&forged, at(NOW)).unwrap().proof,
        Err(Refusal::BadProof)
    );
    // A proof copied onto another target.
    let good = ours.mark_at("llm/stable", 1, at(NOW));
    let moved = good.to_str().unwrap().replace("llm/stable", "llm/canary");
    let moved = HeaderValue::try_from(moved).unwrap();
    assert_eq!(
        ours.check_at(&moved, at(NOW)).unwrap().proof,
        Err(Refusal::BadProof)
    );
}

#[test]
fn a_marker_by_hand_or_from_a_sidecar_without_a_key_is_unsigned() {
    let ours = trust(b"key-one", None, None);
    let by_hand = HeaderValue::from_static("llm/canary");
    let c = ours.check_at(&by_hand, at(NOW)).unwrap();
    assert_eq!(
        (c.target, c.hop, c.proof),
        ("llm/canary", 1, Err(Refusal::Unsigned))
    );
    let keyless = Trust::default().mark_at("llm/canary", 3, at(NOW));
    assert_eq!(keyless, "llm/canary;hop=3");
    let c = ours.check_at(&keyless, at(NOW)).unwrap();
    assert_eq!((c.hop, c.proof), (3, Err(Refusal::Unsigned)));
}

#[test]
fn a_sidecar_without_a_key_proves_nothing() {
    let signed = trust(b"key-one", None, None).mark_at("llm/canary", 1, at(NOW));
    assert_eq!(
        Trust::default().check_at(&signed, at(NOW)).unwrap().proof,
        Err(Refusal::NoKey)
    );
}

#[test]
fn an_old_or_future_marker_is_expired() {
    let t = trust(b"key-one", None, None);
    let m = t.mark_at("llm/canary", 1, at(NOW));
    assert_eq!(t.check_at(&m, at(NOW + MAX_SKEW)).unwrap().proof, Ok(()));
    assert_eq!(
        t.check_at(&m, at(NOW + MAX_SKEW + 1)).unwrap().proof,
        Err(Refusal::Expired)
    );
    assert_eq!(
        t.check_at(&m, at(NOW - MAX_SKEW - 1)).unwrap().proof,
        Err(Refusal::Expired)
    );
}

#[test]
fn garbage_is_malformed_and_unknown_parameters_are_ignored() {
    let t = trust(b"key-one", None, None);
    for bad in [
        "llm",
        "llm/canary;t=abc;sig=x",
        "llm/canary;t=1",
        "llm/canary;noequals",
        "llm/canary;t=1800000000;sig=***",
    ] {
        let v = HeaderValue::try_from(bad).unwrap();
        let r = t.check_at(&v, at(NOW)).and_then(|c| c.proof);
        assert_eq!(r, Err(Refusal::Malformed), "{bad}");
    }
    let m = t.mark_at("llm/canary", 1, at(NOW));
    let extended = HeaderValue::try_from(format!("{};zone=a", m.to_str().unwrap())).unwrap();
    assert_eq!(t.check_at(&extended, at(NOW)).unwrap().proof, Ok(()));
}

#[test]
fn after_a_rotation_the_previous_key_signs_for_the_grace_period_and_both_are_accepted() {
    let rotated = NOW;
    let new = trust(b"key-two", Some(b"key-one"), Some(at(rotated)));
    let not_yet_rotated = trust(b"key-one", None, None);
    // Within the grace period a peer that has only the old key accepts the marker...
    let early = new.mark_at("llm/canary", 1, at(rotated + 10));
    assert_eq!(
        not_yet_rotated
            .check_at(&early, at(rotated + 10))
            .unwrap()
            .proof,
        Ok(())
    );
    // ...after it the new key signs, which only peers that read the rotation accept.
    let late = new.mark_at("llm/canary", 1, at(rotated + ROTATION_GRACE.as_secs() + 1));
    let now = at(rotated + ROTATION_GRACE.as_secs() + 1);
    assert_eq!(
        not_yet_rotated.check_at(&late, now).unwrap().proof,
        Err(Refusal::BadProof)
    );
    assert_eq!(new.check_at(&late, now).unwrap().proof, Ok(()));
    // A sidecar that rotated still accepts markers signed with the previous key.
    let old = not_yet_rotated.mark_at("llm/canary", 1, now);
    assert_eq!(new.check_at(&old, now).unwrap().proof, Ok(()));
}
