//! Property tests of the rules that stand between client input and SQL: slug and name
//! parsing, identifier quoting, and request-body parsing (which never panics, and accepts
//! exactly the valid bodies).

use proptest::prelude::*;
use shared::{
    api::parse_create_body,
    domain::{quote_ident, Slug, TenantName, DATABASE_PREFIX},
};

/// The slug rule written independently of `Slug::parse`.
fn is_valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=48).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Reads a quoted identifier back; `None` if it is not exactly one identifier.
fn unquote(q: &str) -> Option<String> {
    let inner = q.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            // Inside, a quote only ever appears doubled.
            if chars.next()? != '"' {
                return None;
            }
        }
        out.push(c);
    }
    Some(out)
}

fn slugish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,55}",
        "[a-zA-Z0-9_\\-\" ;.é]{0,60}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn slug_accepts_exactly_the_rule(s in slugish()) {
        prop_assert_eq!(Slug::parse(&s).is_ok(), is_valid_slug(&s), "{:?}", s);
    }

    #[test]
    fn every_accepted_slug_yields_exactly_one_identifier(s in "[a-z][a-z0-9_]{2,47}") {
        let slug = Slug::parse(&s).unwrap();
        let name = slug.database_name();
        prop_assert_eq!(name.as_str(), format!("{DATABASE_PREFIX}{s}"));
        prop_assert!(name.as_str().len() <= 63, "fits PostgreSQL's identifier limit");
        let quoted = name.quoted();
        prop_assert_eq!(quoted.matches('"').count(), 2);
        prop_assert_eq!(unquote(&quoted), Some(name.as_str().to_owned()));
    }

    #[test]
    fn quoting_any_string_round_trips(s in any::<String>()) {
        prop_assert_eq!(unquote(&quote_ident(&s)), Some(s));
    }

    #[test]
    fn names_accept_exactly_the_rule(s in any::<String>()) {
        let t = s.trim();
        let valid = !t.is_empty() && t.chars().count() <= 200 && !t.chars().any(char::is_control);
        prop_assert_eq!(TenantName::parse(&s).is_ok(), valid, "{:?}", s);
        if let Ok(n) = TenantName::parse(&s) {
            prop_assert_eq!(n.as_str(), t);
        }
    }

    #[test]
    fn body_parsing_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_create_body(&bytes);
    }

    #[test]
    fn body_parsing_accepts_exactly_valid_bodies(
        name in prop_oneof![Just(serde_json::Value::Null), any::<String>().prop_map(serde_json::Value::from), any::<i64>().prop_map(serde_json::Value::from)],
        slug in prop_oneof![slugish().prop_map(serde_json::Value::from), Just(serde_json::json!(["x"]))],
        extra in proptest::option::of("[a-z]{1,8}"),
    ) {
        let mut body = serde_json::json!({"name": name, "slug": slug});
        if let Some(k) = &extra {
            if k != "name" && k != "slug" {
                body[k.as_str()] = serde_json::json!(1);
            }
        }
        let valid = body.as_object().unwrap().len() == 2
            && body["name"].as_str().is_some_and(|n| TenantName::parse(n).is_ok())
            && body["slug"].as_str().is_some_and(is_valid_slug);
        let parsed = parse_create_body(body.to_string().as_bytes());
        prop_assert_eq!(parsed.is_ok(), valid, "{}", body);
    }
}
