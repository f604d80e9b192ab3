//! Durations as users write them in a ModelService (`500ms`, `30s`, `5m`, `1h30m`): a string in the
//! API, checked by the CRD schema, parsed here for the mesh config.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The pattern the CRD enforces: one or more `<digits><unit>` groups, units ms, s, m, h.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// A zero duration in any spelling (`0s`, `00ms`, `0m0s`): refused, since no field of a
/// ModelService means anything useful with it (a zero timeout fails every request).
pub const ZERO_DURATION_PATTERN: &str = "^(0+(ms|s|m|h))+$";

/// A duration such as `500ms`, `30s`, `5m` or `1h30m`, longer than zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// The duration, or `None` if the text does not follow [`DURATION_PATTERN`] or overflows.
    pub fn parse(&self) -> Option<std::time::Duration> {
        parse_duration(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Duration(s.to_string())
    }
}

impl JsonSchema for Duration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{DURATION_PATTERN}')"),
                "message": "must be a duration such as 500ms, 30s, 5m or 1h30m (units ms, s, m, h)"
            }, {
                "rule": format!("!self.matches('{ZERO_DURATION_PATTERN}')"),
                "message": "must be longer than 0 (leave the field unset instead)"
            }]
        })
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h30m`; `None` on anything else (empty, unknown unit, overflow).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        rest = &rest[unit_len..];
        total_ms = total_ms.checked_add(value.checked_mul(unit_ms)?)?;
    }
    Some(std::time::Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn parses_each_unit_and_combinations() {
        assert_eq!(parse_duration("500ms"), Some(D::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(D::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(D::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(D::from_secs(5400)));
        assert_eq!(parse_duration("1m500ms"), Some(D::from_millis(60_500)));
        assert_eq!(parse_duration("0s"), Some(D::ZERO));
    }

    #[test]
    fn refuses_what_the_crd_pattern_refuses() {
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "5 s",
            "-1s",
            "1d",
            "1us",
            "ms5",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
