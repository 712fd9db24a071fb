//! Who owns a configured model or plan: the configuration file or the API.
//!
//! Both may change a model or a plan. At each start the configuration is
//! applied entry by entry, and the store remembers what it applied. The
//! rule, for one entry:
//!
//! - not in the store: the configuration creates it;
//! - the store already holds what the configuration says: nothing to do;
//! - the configuration still says what was last applied, and the store
//!   holds something else: the API changed it since, and the API's version
//!   stays (the configuration did not change, so it has nothing new to say);
//! - the configuration changed since it was last applied, and the store
//!   still holds what was applied: the configuration's change is written;
//! - both changed (or nothing was recorded, so that it cannot be told):
//!   a conflict, which an operator resolves; nothing is written silently.
//!
//! The values compared are anything with equality (the store compares its
//! canonical encodings).

/// What a start does with one configured entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigDecision {
    /// The store holds what the configuration says.
    Unchanged,
    /// The store has no such entry: the configuration's is written.
    Create,
    /// The configuration changed since it was last applied and the store did
    /// not: the configuration's is written.
    Update,
    /// The configuration is what was last applied, and the store was changed
    /// since (through the API): the store's stays.
    KeepEdit,
    /// Both changed since the last apply, or no apply was recorded and they
    /// differ: an operator decides.
    Conflict,
}

/// Which side wins a conflict, when the operator said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigWinner {
    /// The configuration's entry replaces the store's.
    Config,
    /// The store's stays, and the configuration's entry counts as applied.
    Api,
}

/// The decision for one entry: `stored` is the store's current value,
/// `applied` what the configuration said when it was last applied (none if
/// never recorded), `config` what it says now.
pub fn decide<T: PartialEq>(stored: Option<&T>, applied: Option<&T>, config: &T) -> ConfigDecision {
    let Some(stored) = stored else { return ConfigDecision::Create };
    if stored == config {
        ConfigDecision::Unchanged
    } else if applied == Some(config) {
        ConfigDecision::KeepEdit
    } else if applied == Some(stored) {
        ConfigDecision::Update
    } else {
        ConfigDecision::Conflict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfigDecision::*;

    #[test]
    fn every_case_of_the_rule() {
        // (stored, applied, config) → decision
        let cases: [(Option<&str>, Option<&str>, &str, ConfigDecision); 8] = [
            (None, None, "a", Create),
            (None, Some("a"), "a", Create),
            (Some("a"), None, "a", Unchanged),
            (Some("a"), Some("old"), "a", Unchanged),
            (Some("edit"), Some("a"), "a", KeepEdit),
            (Some("a"), Some("a"), "b", Update),
            (Some("edit"), Some("a"), "b", Conflict),
            (Some("old"), None, "a", Conflict),
        ];
        for (stored, applied, config, want) in cases {
            let stored = stored.map(str::to_string);
            let applied = applied.map(str::to_string);
            let got = decide(stored.as_ref(), applied.as_ref(), &config.to_string());
            assert_eq!(got, want, "stored {stored:?}, applied {applied:?}, config {config:?}");
        }
    }
}
