//! The `rooms` claim of a connect token: which rooms a session may join in
//! `claims` and `token` mode. Parsed once, at the upgrade, into [`Grants`],
//! which the session keeps; a join then costs a comparison or a few, with no
//! allocation.
//!
//! The claim is an array of strings: exact names (`"team:42"`), prefixes
//! ending in `*` (`"chat:*"`), or `"*"` for every room. Our choices
//! (docs/rooms.md): an entry with a `*` anywhere but at its end grants
//! nothing; an entry longer than `max_id_bytes` (its `*` not counted) or holding a
//! control character is ignored; a claim that is not an array of strings
//! grants nothing at all, logged once per process.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use crate::ids;

/// Rooms a session may join.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// `"*"` was granted.
    all: bool,
    /// Exact names, sorted (binary search).
    exact: Box<[Box<str>]>,
    /// Prefixes of `prefix*` entries, without the `*`.
    prefixes: Box<[Box<str>]>,
}

/// A claim of the wrong type is logged once, not once per connect.
static WRONG_TYPE_LOGGED: AtomicBool = AtomicBool::new(false);

impl Grants {
    /// The grants of a `rooms` claim; `None` when it is absent, of the wrong
    /// type, or grants nothing.
    pub fn from_claim(claim: Option<&Value>, max_id_bytes: usize) -> Option<Grants> {
        let entries = match claim? {
            Value::Array(entries) if entries.iter().all(Value::is_string) => entries,
            _ => {
                if !WRONG_TYPE_LOGGED.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "a connect token's \"rooms\" claim is not an array of strings: it grants no room (logged once)"
                    );
                }
                return None;
            }
        };
        let mut grants = Grants::default();
        let (mut exact, mut prefixes) = (Vec::new(), Vec::new());
        for entry in entries.iter().filter_map(Value::as_str) {
            let (name, prefix) = match entry.strip_suffix('*') {
                Some(prefix) => (prefix, true),
                None => (entry, false),
            };
            if name.contains('*') || ids::check(name, max_id_bytes).is_err() {
                continue;
            }
            match (prefix, name.is_empty()) {
                (true, true) => grants.all = true,
                (true, false) => prefixes.push(Box::from(name)),
                (false, false) => exact.push(Box::from(name)),
                (false, true) => {}
            }
        }
        exact.sort_unstable();
        exact.dedup();
        grants.exact = exact.into_boxed_slice();
        grants.prefixes = prefixes.into_boxed_slice();
        let empty = !grants.all && grants.exact.is_empty() && grants.prefixes.is_empty();
        (!empty).then_some(grants)
    }

    /// Whether these grants cover `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.all
            || self.exact.binary_search_by(|e| (**e).cmp(room)).is_ok()
            || self.prefixes.iter().any(|p| room.starts_with(&**p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grants(claim: Value) -> Option<Grants> {
        Grants::from_claim(Some(&claim), 16)
    }

    #[test]
    fn exact_names_prefixes_and_everything() {
        let g = grants(json!(["team:42", "chat:*", "b"])).unwrap();
        assert!(g.allows("team:42") && g.allows("b"));
        assert!(g.allows("chat:") && g.allows("chat:lobby"));
        assert!(!g.allows("team:4") && !g.allows("team:421") && !g.allows("chat"));
        let all = grants(json!(["*"])).unwrap();
        assert!(all.allows("anything") && all.allows(""));
    }

    #[test]
    fn a_star_anywhere_but_the_end_grants_nothing() {
        assert_eq!(grants(json!(["a*b", "*x", "a**"])), None);
        let g = grants(json!(["a*b", "ok"])).unwrap();
        assert!(!g.allows("a*b") && !g.allows("axb") && g.allows("ok"));
    }

    #[test]
    fn names_past_the_bound_or_with_controls_are_ignored() {
        let long = "x".repeat(17);
        let g = grants(json!([long.clone(), format!("{long}*"), "a\nb", "fine"])).unwrap();
        assert!(!g.allows(&long) && !g.allows(&format!("{long}1")) && !g.allows("a\nb"));
        assert!(g.allows("fine"));
        assert!(grants(json!(["x".repeat(16)])).is_some(), "at the bound");
    }

    #[test]
    fn a_claim_of_the_wrong_type_grants_nothing() {
        for claim in [
            json!("team:42"),
            json!(["a", 1]),
            json!({"a": 1}),
            json!(null),
        ] {
            assert_eq!(grants(claim.clone()), None, "{claim}");
        }
        assert_eq!(Grants::from_claim(None, 16), None);
        assert_eq!(grants(json!([])), None);
    }
}
