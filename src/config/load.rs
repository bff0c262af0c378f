//! Layering: embedded defaults <- config file <- `SHARDCAST_<SECTION>__<KEY>` variables <-
//! flags, merged as TOML tables, deserialized once, then validated.
//!
//! Every layer is checked as it is applied (unknown keys, wrong types), so an error names
//! the layer it came from: the file path, the variable, or the flag. Each key remembers
//! which layer set it last, so a range error found by `validate` names that layer too.

use super::{Config, ConfigError, Origin, DEFAULTS_TOML};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "SHARDCAST_";

/// Keys of one `[[policy]]` rule.
const POLICY_KEYS: [&str; 3] = ["pattern", "subscribe", "publish"];

/// Keys of one history rule (`[[history]]` or `[[history.rules]]`).
const HISTORY_RULE_KEYS: [&str; 6] = ["pattern", "prefix", "size", "bytes", "ttl", "replay"];

/// `[[history]]` tables (an array of rules) are the short form of `[history] rules = [..]`:
/// TOML cannot hold both `[[history]]` and `history.max_bytes`, so the rules may be
/// written either way and the cap set with `[history]` or `SHARDCAST_HISTORY__MAX_BYTES`.
fn normalize_history(layer: &mut Table) {
    if let Some(Value::Array(rules)) = layer.get("history") {
        let mut t = Table::new();
        t.insert("rules".to_owned(), Value::Array(rules.clone()));
        layer.insert("history".to_owned(), Value::Table(t));
    }
}

/// Values given on the command line; they win over file and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen ADDR` -> `server.listen`.
    pub listen: Option<SocketAddr>,
    /// `--shards N` -> `server.shards`.
    pub shards: Option<usize>,
}

/// Builds the configuration: embedded defaults, then `file`, then the `SHARDCAST_*`
/// variables among `env` (pass `std::env::vars()`), then `overrides`; then validates.
///
/// Variables starting with `SHARDCAST_` and containing `__` are overrides
/// (`SHARDCAST_SERVER__LISTEN`); section and key are case-insensitive. Other `SHARDCAST_`
/// variables (`SHARDCAST_API_KEY`, ...) are not configuration and are ignored, unless
/// they look like a mistyped override (`SHARDCAST_SERVER_LISTEN`).
///
/// # Errors
/// [`ConfigError`] naming the file / variable / flag, the key and the reason: unreadable
/// file, TOML syntax, unknown key, wrong type, out-of-range or inconsistent value,
/// or `api.key_env` naming an unset variable.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let defaults: Table = toml::from_str(DEFAULTS_TOML).map_err(|e| ConfigError::Syntax {
        path: PathBuf::from("<embedded config/shardcast.toml>"),
        message: e.to_string(),
    })?;
    let mut stack = Stack {
        merged: defaults.clone(),
        defaults,
        set_by: HashMap::new(),
        seq: 0,
    };

    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let layer: Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        stack.apply(layer, Origin::File(path.to_owned()))?;
    }

    let mut vars: Vec<(String, String)> = env.into_iter().collect();
    // Deterministic: with several bad variables, the same one is reported every time.
    vars.sort();
    for (name, raw) in &vars {
        if let Some(layer) = env_layer(&stack.defaults, name, raw)? {
            stack.apply(layer, Origin::Env(name.clone()))?;
        }
    }

    if let Some(addr) = overrides.listen {
        stack.apply(
            one_key("server", "listen", Value::String(addr.to_string())),
            Origin::Flag("--listen"),
        )?;
    }
    if let Some(shards) = overrides.shards {
        let n = i64::try_from(shards).map_err(|_| ConfigError::Invalid {
            origin: Origin::Flag("--shards"),
            key: "server.shards".to_owned(),
            reason: format!("{shards} is too large"),
        })?;
        stack.apply(
            one_key("server", "shards", Value::Integer(n)),
            Origin::Flag("--shards"),
        )?;
    }

    let config = stack.config()?;
    if let Err(v) = config.validate() {
        return Err(ConfigError::Invalid {
            origin: stack.last_origin(&v.involves),
            key: v.key.to_owned(),
            reason: v.reason,
        });
    }
    check_secrets(&config, &stack, &vars)?;
    check_tls(&config, &stack)?;
    Ok(config)
}

/// Defaults plus the layers applied so far, with who set each key last.
struct Stack {
    defaults: Table,
    merged: Table,
    /// dotted key -> (layer sequence number, origin) of the last layer that set it.
    set_by: HashMap<String, (usize, Origin)>,
    seq: usize,
}

impl Stack {
    /// Checks `layer` for unknown keys and wrong types, then merges it in.
    fn apply(&mut self, mut layer: Table, origin: Origin) -> Result<(), ConfigError> {
        normalize_history(&mut layer);
        check_keys(&self.defaults, &layer, &origin)?;
        self.seq += 1;
        for (name, value) in layer.clone() {
            match (self.merged.get_mut(&name), value) {
                (Some(Value::Table(dst)), Value::Table(src)) => {
                    for (key, v) in src {
                        self.set_by
                            .insert(format!("{name}.{key}"), (self.seq, origin.clone()));
                        dst.insert(key, v);
                    }
                }
                (_, v) => {
                    self.set_by.insert(name.clone(), (self.seq, origin.clone()));
                    self.merged.insert(name, v);
                }
            }
        }
        if let Err(e) = to_config(&self.merged) {
            return Err(self.locate_type_error(&layer, origin, &e));
        }
        Ok(())
    }

    /// Finds which key of `layer` does not deserialize, by trying each one alone over the
    /// defaults (types never depend on other keys, so this is exact).
    fn locate_type_error(
        &self,
        layer: &Table,
        origin: Origin,
        whole: &toml::de::Error,
    ) -> ConfigError {
        for (name, value) in layer {
            let mut probes: Vec<(String, Table)> = Vec::new();
            match value {
                Value::Table(t) => {
                    for (key, v) in t {
                        let mut probe = self.defaults.clone();
                        if let Some(Value::Table(sec)) = probe.get_mut(name) {
                            sec.insert(key.clone(), v.clone());
                        }
                        probes.push((format!("{name}.{key}"), probe));
                    }
                }
                v => {
                    let mut probe = self.defaults.clone();
                    probe.insert(name.clone(), v.clone());
                    probes.push((name.clone(), probe));
                }
            }
            for (key, probe) in probes {
                if let Err(e) = to_config(&probe) {
                    let shown = lookup(layer, &key).map(|v| v.to_string());
                    return ConfigError::Invalid {
                        origin,
                        key,
                        reason: type_reason(&e, shown.as_deref()),
                    };
                }
            }
        }
        ConfigError::Invalid {
            origin,
            key: "(config)".to_owned(),
            reason: whole.message().to_owned(),
        }
    }

    fn config(&self) -> Result<Config, ConfigError> {
        to_config(&self.merged).map_err(|e| ConfigError::Invalid {
            origin: Origin::Defaults,
            key: "(config)".to_owned(),
            reason: e.message().to_owned(),
        })
    }

    /// Of `keys`, the origin of the one set by the latest layer (defaults if none was set).
    fn last_origin(&self, keys: &[&str]) -> Origin {
        keys.iter()
            .filter_map(|k| self.set_by.get(*k))
            .max_by_key(|(seq, _)| *seq)
            .map_or(Origin::Defaults, |(_, o)| o.clone())
    }
}

fn to_config(table: &Table) -> Result<Config, toml::de::Error> {
    Value::Table(table.clone()).try_into()
}

fn lookup<'a>(table: &'a Table, dotted: &str) -> Option<&'a Value> {
    match dotted.split_once('.') {
        Some((section, key)) => table.get(section)?.as_table()?.get(key),
        None => table.get(dotted),
    }
}

fn type_reason(e: &toml::de::Error, shown: Option<&str>) -> String {
    let msg = plain_types(e.message().trim_end());
    let msg = msg.as_str();
    match shown {
        // serde's "invalid type" messages already quote the value.
        Some(v) if !msg.starts_with("invalid type") && !msg.contains(v) => {
            format!("{msg} (got {v})")
        }
        _ => msg.to_owned(),
    }
}

/// serde names Rust types (`expected usize`); say what a config author should write.
fn plain_types(msg: &str) -> String {
    const NAMES: [(&str, &str); 9] = [
        ("usize", "a whole number, 0 or more"),
        ("u64", "a whole number, 0 or more"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u16", "a whole number from 0 to 65535"),
        ("u8", "a whole number from 0 to 255"),
        ("i64", "a whole number"),
        ("i32", "a whole number"),
        ("f64", "a number"),
        ("f32", "a number"),
    ];
    for (rust, plain) in NAMES {
        if let Some(head) = msg.strip_suffix(&format!("expected {rust}")) {
            return format!("{head}expected {plain}");
        }
    }
    msg.to_owned()
}

fn one_key(section: &str, key: &str, value: Value) -> Table {
    let mut inner = Table::new();
    inner.insert(key.to_owned(), value);
    let mut outer = Table::new();
    outer.insert(section.to_owned(), Value::Table(inner));
    outer
}

fn known_keys(t: &Table) -> String {
    t.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// Refuses keys the defaults do not have: sections, keys in sections, policy rule keys.
fn check_keys(defaults: &Table, layer: &Table, origin: &Origin) -> Result<(), ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        origin: origin.clone(),
        key,
        reason,
    };
    for (name, value) in layer {
        match (defaults.get(name), value) {
            (None, _) => {
                return Err(invalid(
                    name.clone(),
                    format!("unknown key; the sections are: {}", known_keys(defaults)),
                ))
            }
            (Some(Value::Table(section)), Value::Table(t)) => {
                if let Some(key) = t.keys().find(|k| !section.contains_key(*k)) {
                    return Err(invalid(
                        format!("{name}.{key}"),
                        format!("unknown key; [{name}] has: {}", known_keys(section)),
                    ));
                }
                if let (true, Some(Value::Array(rules))) = (name == "history", t.get("rules")) {
                    check_rule_keys(rules, "history", &HISTORY_RULE_KEYS, origin)?;
                }
            }
            (Some(Value::Table(_)), _) => {
                return Err(invalid(
                    name.clone(),
                    format!("must be a table: write it as a [{name}] section"),
                ))
            }
            (Some(_), Value::Array(rules)) if name == "policy" => {
                check_rule_keys(rules, "policy", &POLICY_KEYS, origin)?;
            }
            (Some(_), Value::Array(links)) if name == "upstream" => {
                check_rule_keys(links, "upstream", &super::upstream::KEYS, origin)?;
            }
            (Some(_), _) => {}
        }
    }
    Ok(())
}

/// Each entry of a rules array (`[[policy]]`, `[[history]]`) is a table with known keys.
fn check_rule_keys(
    rules: &[Value],
    name: &str,
    known: &[&str],
    origin: &Origin,
) -> Result<(), ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        origin: origin.clone(),
        key,
        reason,
    };
    for (i, rule) in rules.iter().enumerate() {
        let Some(rule) = rule.as_table() else {
            return Err(invalid(
                format!("{name}[{i}]"),
                format!("must be a table: write it as a [[{name}]] section"),
            ));
        };
        if let Some(key) = rule.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(invalid(
                format!("{name}[{i}].{key}"),
                format!("unknown key; a [[{name}]] rule has: {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Turns one environment variable into a one-key layer, `Ok(None)` when it is not a
/// configuration variable.
fn env_layer(defaults: &Table, name: &str, raw: &str) -> Result<Option<Table>, ConfigError> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(None);
    };
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        origin: Origin::Env(name.to_owned()),
        key,
        reason,
    };
    let Some((section, key)) = rest.split_once("__") else {
        if let Some((section, key)) = near_miss(defaults, rest) {
            return Err(invalid(
                format!("{section}.{key}"),
                format!(
                    "not a config override; did you mean {ENV_PREFIX}{}__{}?",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                ),
            ));
        }
        return Ok(None);
    };
    let section = section.to_ascii_lowercase();
    let key = key.to_ascii_lowercase();
    let default = match defaults.get(&section) {
        Some(Value::Table(t)) => match t.get(&key) {
            Some(v) => v,
            None => {
                return Err(invalid(
                    format!("{section}.{key}"),
                    format!("unknown key; [{section}] has: {}", known_keys(t)),
                ))
            }
        },
        Some(_) => {
            return Err(invalid(
                section,
                "cannot be set from the environment; write it in the config file".to_owned(),
            ))
        }
        None => {
            return Err(invalid(
                section,
                format!(
                    "unknown section; the sections are: {}",
                    known_keys(defaults)
                ),
            ))
        }
    };
    let value = env_value(default, raw);
    Ok(Some(one_key(&section, &key, value)))
}

/// `SHARDCAST_SERVER_LISTEN` (one underscore) -> `Some(("server", "listen"))`.
fn near_miss(defaults: &Table, rest: &str) -> Option<(String, String)> {
    let lower = rest.to_ascii_lowercase();
    lower.match_indices('_').find_map(|(i, _)| {
        let (section, key) = (lower.get(..i)?, lower.get(i + 1..)?);
        let known = defaults.get(section)?.as_table()?.contains_key(key);
        known.then(|| (section.to_owned(), key.to_owned()))
    })
}

/// The value of a variable, typed after the key's default: string keys take the text as
/// is; other keys take it as a TOML value when it is one (`true`, `42`, `["a"]`), else as
/// a string (which then fails the type check with a clear message). Array keys also take
/// a comma-separated list.
fn env_value(default: &Value, raw: &str) -> Value {
    if default.is_str() {
        return Value::String(raw.to_owned());
    }
    if let Some(v) = parse_toml_value(raw) {
        return v;
    }
    if default.is_array() {
        let items = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_owned()))
            .collect();
        return Value::Array(items);
    }
    Value::String(raw.to_owned())
}

fn parse_toml_value(raw: &str) -> Option<Value> {
    if raw.contains(['\n', '\r']) {
        return None;
    }
    let mut table: Table = toml::from_str(&format!("v = {raw}")).ok()?;
    table.remove("v")
}

/// Variables named by the config must be set, or the broker would start without the
/// secret it was told to use.
/// The TLS files, read and checked the way the broker loads them at start, so an
/// unreadable, non-PEM or mismatched pair is a config error (exit 2) naming the key.
fn check_tls(config: &Config, stack: &Stack) -> Result<(), ConfigError> {
    match crate::tls::Tls::from_config(&config.server) {
        Ok(_) => Ok(()),
        Err(e) => Err(ConfigError::Invalid {
            origin: stack.last_origin(&[e.key]),
            key: e.key.to_owned(),
            reason: e.reason,
        }),
    }
}

fn check_secrets(
    config: &Config,
    stack: &Stack,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    // The auth secrets, read the way the broker reads them at start, so an unset one is
    // a config error (exit 2, naming where the key was set) like every other.
    let lookup = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Err(e) = crate::auth::Authenticator::from_config(&config.auth, &lookup) {
        let (key, reason) = e.split_once(": ").unwrap_or(("auth.type", e.as_str()));
        return Err(ConfigError::Invalid {
            origin: stack.last_origin(&[key, "auth.type"]),
            key: key.to_owned(),
            reason: reason.to_owned(),
        });
    }
    for (i, u) in config.upstream.iter().enumerate() {
        for (key, var) in u.secret_vars() {
            if !vars.iter().any(|(k, v)| k == var && !v.is_empty()) {
                return Err(ConfigError::Invalid {
                    origin: stack.last_origin(&["upstream"]),
                    key: key.to_owned(),
                    reason: format!(
                        "upstream {} ({:?}): environment variable {var} is not set (or empty)",
                        i + 1,
                        u.display_name(i)
                    ),
                });
            }
        }
    }
    let name = config.api.key_env.as_str();
    if name.is_empty() {
        return Ok(());
    }
    let set = vars.iter().any(|(k, v)| k == name && !v.is_empty());
    if !set {
        return Err(ConfigError::Invalid {
            origin: stack.last_origin(&["api.key_env"]),
            key: "api.key_env".to_owned(),
            reason: format!(
                "environment variable {name} is not set (or empty); set it to the API key, or set api.key_env = \"\" for loopback-only access"
            ),
        });
    }
    Ok(())
}
