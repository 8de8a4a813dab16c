//! Combining rule outcomes into a decision, deny-overrides: any `deny` rule that is true or
//! fails to evaluate denies; otherwise any true `allow` or `reveal` rule allows; otherwise deny.
//! The order of rules and policies never matters.

/// What a rule asks for when its condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    Allow,
    Reveal,
    Deny,
}

impl Effect {
    pub fn parse(s: &str) -> Option<Effect> {
        match s {
            "allow" => Some(Effect::Allow),
            "reveal" => Some(Effect::Reveal),
            "deny" => Some(Effect::Deny),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Reveal => "reveal",
            Effect::Deny => "deny",
        }
    }
}

/// The evaluation of one applicable rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    /// A stable name for the rule (policy match and index), reported as "matched".
    pub rule: String,
    pub effect: Effect,
    /// `Ok(true)` the condition held, `Ok(false)` it did not, `Err` it failed to evaluate.
    pub result: Result<bool, crate::policy::cel::CelError>,
}

/// The decision and the rules that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whether the value may be shown (a true `reveal` rule and no deny).
    pub reveal: bool,
    /// The rules that decided, sorted (so order never shows through).
    pub matched: Vec<String>,
}

pub fn decide(outcomes: &[RuleOutcome]) -> Decision {
    let mut denying: Vec<String> = outcomes
        .iter()
        .filter(|o| o.effect == Effect::Deny && !matches!(o.result, Ok(false)))
        .map(|o| o.rule.clone())
        .collect();
    if !denying.is_empty() {
        denying.sort();
        return Decision {
            allowed: false,
            reveal: false,
            matched: denying,
        };
    }
    let mut allowing: Vec<&RuleOutcome> = outcomes
        .iter()
        .filter(|o| o.effect != Effect::Deny && o.result == Ok(true))
        .collect();
    allowing.sort_by(|a, b| a.rule.cmp(&b.rule));
    Decision {
        allowed: !allowing.is_empty(),
        reveal: allowing.iter().any(|o| o.effect == Effect::Reveal),
        matched: allowing.iter().map(|o| o.rule.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cel::CelError;
    use proptest::prelude::*;

    fn o(rule: &str, effect: Effect, result: Result<bool, CelError>) -> RuleOutcome {
        RuleOutcome {
            rule: rule.into(),
            effect,
            result,
        }
    }

    #[test]
    fn deny_overrides_and_errors_deny() {
        let allow = o("p0/r0", Effect::Allow, Ok(true));
        assert!(decide(std::slice::from_ref(&allow)).allowed);
        assert!(!decide(&[]).allowed, "nothing applies: deny");
        assert!(!decide(&[allow.clone(), o("p0/r1", Effect::Deny, Ok(true))]).allowed);
        let failing = o(
            "p1/r0",
            Effect::Deny,
            Err(CelError::Eval("no such key".into())),
        );
        let d = decide(&[allow.clone(), failing]);
        assert!(!d.allowed, "a failing deny rule denies");
        assert_eq!(d.matched, vec!["p1/r0"]);
        assert!(
            !decide(&[o("a", Effect::Allow, Err(CelError::Eval("x".into())))]).allowed,
            "a failing allow rule allows nothing"
        );
        let r = decide(&[allow, o("b", Effect::Reveal, Ok(true))]);
        assert!(r.allowed && r.reveal);
    }

    fn outcome_strategy() -> impl Strategy<Value = RuleOutcome> {
        (
            0u8..20,
            prop_oneof![
                Just(Effect::Allow),
                Just(Effect::Reveal),
                Just(Effect::Deny)
            ],
            0u8..3,
        )
            .prop_map(|(n, effect, r)| RuleOutcome {
                rule: format!("rule{n}"),
                effect,
                result: match r {
                    0 => Ok(true),
                    1 => Ok(false),
                    _ => Err(CelError::Eval("error".into())),
                },
            })
    }

    proptest! {
        /// Shuffling rules (and so policies) never changes a decision.
        #[test]
        fn order_never_matters(mut outcomes in proptest::collection::vec(outcome_strategy(), 0..12), seed in any::<u64>()) {
            let before = decide(&outcomes);
            let mut s = seed;
            for i in (1..outcomes.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                outcomes.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(before, decide(&outcomes));
        }
    }
}
