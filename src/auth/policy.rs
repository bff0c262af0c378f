//! `[[policy]]` (SPEC §5): per topic pattern, who may subscribe and who may publish.
//! The HTTP API is never subject to these rules (it has its own key).
//!
//! Rules are tried in order and the first whose pattern matches decides. With no
//! matching rule, anyone connected may subscribe and only the HTTP API may publish
//! (unless `client.allow_publish` opens publishing to every client).
//!
//! A subscription is a pattern, so it may reach topics of several rules: subscribing to
//! `#` must not slip past a rule that keeps `secret/#` to some clients. A subscription is
//! allowed only when every rule whose pattern overlaps it, up to the first rule that
//! covers it entirely (or the default when none does), lets the client subscribe.
//!
//! A JWT may also carry grant claims (`auth.jwt_subscribe_claim`, `jwt_publish_claim`):
//! lists of patterns the holder is limited to, on top of the rules.

use super::Identity;
use crate::config::PolicyRule;
use crate::topic::{pattern_covers, pattern_matches, patterns_overlap};
use serde_json::Value;

/// Whom a rule lets subscribe or publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Every connected client.
    Anyone,
    /// Clients that presented valid credentials.
    Authenticated,
    /// No WebSocket client (the HTTP API still may publish).
    Nobody,
    /// Clients whose JWT has claim `name` (truthy), or equal to / containing `value`.
    Claim {
        /// Claim name.
        name: String,
        /// Required value, if any.
        value: Option<String>,
    },
}

impl Who {
    /// Parses `anyone`, `authenticated`, `nobody`, `claim:NAME` or `claim:NAME=VALUE`.
    ///
    /// # Errors
    /// Anything else, with the accepted forms.
    pub fn parse(s: &str) -> Result<Who, String> {
        match s {
            "anyone" => Ok(Who::Anyone),
            "authenticated" => Ok(Who::Authenticated),
            "nobody" => Ok(Who::Nobody),
            _ => match s.strip_prefix("claim:") {
                Some(rest) if !rest.is_empty() => {
                    let (name, value) = match rest.split_once('=') {
                        Some((n, v)) => (n, Some(v.to_owned())),
                        None => (rest, None),
                    };
                    if name.is_empty() {
                        return Err(format!("{s:?} names no claim"));
                    }
                    Ok(Who::Claim {
                        name: name.to_owned(),
                        value,
                    })
                }
                _ => Err(format!(
                    "{s:?} is not one of anyone, authenticated, nobody, claim:NAME, claim:NAME=VALUE"
                )),
            },
        }
    }

    /// Does this let `identity` (None = anonymous) in?
    fn admits(&self, identity: Option<&Identity>) -> bool {
        match self {
            Who::Anyone => true,
            Who::Nobody => false,
            Who::Authenticated => identity.is_some(),
            Who::Claim { name, value } => identity
                .and_then(|id| id.claims.get(name))
                .is_some_and(|claim| claim_admits(claim, value.as_deref())),
        }
    }
}

/// `claim:NAME` admits a claim that is true, a non-zero number, or a non-empty string,
/// array or object. `claim:NAME=VALUE` admits a string, number or boolean whose text is
/// VALUE, or an array with such an element (one level: arrays inside arrays never match).
fn claim_admits(claim: &Value, want: Option<&str>) -> bool {
    match want {
        None => truthy(claim),
        Some(w) => match claim {
            Value::Array(items) => items.iter().any(|i| scalar_is(i, w)),
            other => scalar_is(other, w),
        },
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn scalar_is(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        _ => false,
    }
}

/// One parsed `[[policy]]` rule.
#[derive(Debug, Clone)]
struct Rule {
    pattern: Box<str>,
    subscribe: Who,
    publish: Who,
}

/// The `[[policy]]` rules and the defaults behind them.
#[derive(Debug, Clone)]
pub struct Policies {
    rules: Vec<Rule>,
    default_publish: Who,
}

impl Policies {
    /// Parses the rules; `allow_publish` is `client.allow_publish` (the default for
    /// topics no rule matches).
    ///
    /// # Errors
    /// `(rule index, reason)` for a rule whose `subscribe` or `publish` does not parse.
    pub fn new(rules: &[PolicyRule], allow_publish: bool) -> Result<Self, (usize, String)> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let who =
                    |field: &str, s: &str| Who::parse(s).map_err(|e| (i, format!("{field}: {e}")));
                Ok(Rule {
                    pattern: r.pattern.as_str().into(),
                    subscribe: who("subscribe", &r.subscribe)?,
                    publish: who("publish", &r.publish)?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Policies {
            rules,
            default_publish: if allow_publish {
                Who::Anyone
            } else {
                Who::Nobody
            },
        })
    }

    /// Whether any rule, the default or a possible grant depends on a JWT claim.
    pub fn uses_claims(&self) -> bool {
        self.rules.iter().any(|r| {
            matches!(r.subscribe, Who::Claim { .. }) || matches!(r.publish, Who::Claim { .. })
        })
    }

    /// May `identity` subscribe to the (valid) `pattern`?
    pub fn may_subscribe(&self, identity: Option<&Identity>, pattern: &str) -> bool {
        let granted = identity
            .and_then(|id| id.may_subscribe.as_ref())
            .is_none_or(|grants| grants.iter().any(|g| pattern_covers(g, pattern)));
        if !granted {
            return false;
        }
        for rule in &self.rules {
            if !patterns_overlap(&rule.pattern, pattern) {
                continue;
            }
            if !rule.subscribe.admits(identity) {
                return false;
            }
            if pattern_covers(&rule.pattern, pattern) {
                return true;
            }
        }
        // Default: anyone connected may subscribe.
        true
    }

    /// May `identity` publish to the (valid) `topic`?
    pub fn may_publish(&self, identity: Option<&Identity>, topic: &str) -> bool {
        self.may_publish_defaulting(identity, topic, &self.default_publish)
    }

    /// May `identity` publish to a dialect's own ingest channel (SemStreams
    /// `semstreams.data_channel`)? As [`Policies::may_publish`], except that when no rule
    /// covers the topic anyone connected may: ingest is what that channel is for.
    pub fn may_ingest(&self, identity: Option<&Identity>, topic: &str) -> bool {
        self.may_publish_defaulting(identity, topic, &Who::Anyone)
    }

    fn may_publish_defaulting(
        &self,
        identity: Option<&Identity>,
        topic: &str,
        default: &Who,
    ) -> bool {
        let granted = identity
            .and_then(|id| id.may_publish.as_ref())
            .is_none_or(|grants| grants.iter().any(|g| pattern_matches(g, topic)));
        if !granted {
            return false;
        }
        self.rules
            .iter()
            .find(|r| pattern_matches(&r.pattern, topic))
            .map_or(default, |r| &r.publish)
            .admits(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(pattern: &str, subscribe: &str, publish: &str) -> PolicyRule {
        PolicyRule {
            pattern: pattern.into(),
            subscribe: subscribe.into(),
            publish: publish.into(),
        }
    }

    fn jwt(claims: Value) -> Identity {
        let Value::Object(map) = claims else {
            unreachable!("test claims are an object")
        };
        Identity::from_claims(map, "subscribe", "publish")
    }

    #[test]
    fn defaults_let_anyone_subscribe_and_only_the_api_publish() {
        let p = Policies::new(&[], false).expect("valid");
        assert!(p.may_subscribe(None, "#"));
        assert!(!p.may_publish(None, "a"));
        assert!(
            p.may_ingest(None, "a"),
            "a dialect's ingest channel is open by default"
        );
        let open = Policies::new(&[], true).expect("valid");
        assert!(open.may_publish(None, "a"));
    }

    #[test]
    fn first_match_wins() {
        let p = Policies::new(
            &[
                rule("chat/#", "anyone", "authenticated"),
                rule("chat/admin", "nobody", "nobody"),
                rule("ops/#", "claim:role=admin", "claim:role=admin"),
            ],
            false,
        )
        .expect("valid");
        let user = Identity::authenticated("u");
        assert!(
            p.may_publish(Some(&user), "chat/admin"),
            "chat/# came first"
        );
        assert!(!p.may_publish(None, "chat/x"));
        assert!(
            !p.may_ingest(None, "chat/x"),
            "a rule closes an ingest channel"
        );
        assert!(p.may_ingest(Some(&user), "chat/x"));
        assert!(p.may_subscribe(None, "chat/x"));
        assert!(!p.may_subscribe(Some(&user), "ops/db"));
        let admin = jwt(json!({"exp": 1, "role": ["dev", "admin"]}));
        assert!(p.may_subscribe(Some(&admin), "ops/db"));
        assert!(p.may_publish(Some(&admin), "ops/db"));
        assert!(!p.may_publish(Some(&admin), "news"), "default: API only");
    }

    #[test]
    fn wildcard_subscriptions_cannot_reach_past_a_rule() {
        let p = Policies::new(
            &[
                rule("secret/#", "claim:clearance", "nobody"),
                rule("#", "anyone", "anyone"),
            ],
            false,
        )
        .expect("valid");
        assert!(!p.may_subscribe(None, "#"), "# would include secret/...");
        assert!(
            !p.may_subscribe(None, "+/plans"),
            "+ would include secret/plans"
        );
        assert!(p.may_subscribe(None, "public/+"));
        let cleared = jwt(json!({"exp": 1, "clearance": true}));
        assert!(p.may_subscribe(Some(&cleared), "#"));
        assert!(p.may_publish(None, "public/x"));
        assert!(!p.may_publish(Some(&cleared), "secret/x"));
    }

    #[test]
    fn jwt_grants_limit_the_holder() {
        let p = Policies::new(&[], true).expect("valid");
        let id = jwt(json!({"exp": 1, "subscribe": ["game/+/score"], "publish": "game/7/move"}));
        assert!(p.may_subscribe(Some(&id), "game/7/score"));
        assert!(p.may_subscribe(Some(&id), "game/+/score"));
        assert!(!p.may_subscribe(Some(&id), "game/#"));
        assert!(p.may_publish(Some(&id), "game/7/move"));
        assert!(!p.may_publish(Some(&id), "game/8/move"));
        let odd = jwt(json!({"exp": 1, "subscribe": 5}));
        assert!(
            !p.may_subscribe(Some(&odd), "a"),
            "a malformed grant grants nothing"
        );
    }

    #[test]
    fn who_parses_and_refuses() {
        assert_eq!(Who::parse("anyone"), Ok(Who::Anyone));
        assert_eq!(
            Who::parse("claim:team=red"),
            Ok(Who::Claim {
                name: "team".into(),
                value: Some("red".into())
            })
        );
        for bad in ["", "api", "claim:", "claim:=x", "Anyone"] {
            assert!(Who::parse(bad).is_err(), "{bad}");
        }
    }
}
