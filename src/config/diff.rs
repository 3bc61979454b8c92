//! What changed between two configurations (a reload), key by key: both files' views,
//! defaults applied, flattened to dotted keys (`pair[0].backup`, `limits.max_transactions`)
//! and compared. It also says which keys cannot change without a restart.
//!
//! It compares; it does not apply anything (that is the running proxy's reload).

use std::collections::BTreeMap;

use super::Config;

/// One key whose value a reload changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The dotted key, as in the file (`pair[1].primary`).
    pub key: String,
    /// The value before (`None`: the key was absent): text as written, numbers, booleans
    /// and lists of plain values in JSON form; secrets hidden.
    pub from: Option<String>,
    /// The value after (`None`: the key is gone).
    pub to: Option<String>,
    /// The key cannot change without a restart: the running proxy keeps its old value.
    pub needs_restart: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            show(&self.from),
            show(&self.to)
        )
    }
}

/// Keys that only a restart changes: listen sockets and the HTTP socket are bound once,
/// the runtime's threads are started once, every dialog's Record-Route carries tokens
/// made with the flow key, and the TLS contexts are built from `[tls]` at start (SIGHUP
/// re-reads the files they name, not the section).
const RESTART_ONLY: &[&str] = &[
    "listen",
    "http.address",
    "runtime.worker_threads",
    "runtime.workers",
    "flow.token_key",
    "tls",
];

/// Keys whose values are not written into logs.
const SECRETS: &[&str] = &["flow.token_key", "http.admin_token"];

impl Change {
    /// Whether the key is `section` or inside it (`pair[0].backup` is under `pair`).
    pub fn is_under(&self, section: &str) -> bool {
        is_under(&self.key, section)
    }
}

/// Whether `key` (dotted, as in [`Change::key`]) can only change with a restart.
pub fn needs_restart(key: &str) -> bool {
    RESTART_ONLY.iter().any(|k| is_under(key, k))
}

/// `key` is `section` or inside it (`listen[0].address` is under `listen`).
fn is_under(key: &str, section: &str) -> bool {
    key.strip_prefix(section)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The keys whose values differ between `old` and `new`, in key order.
pub fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let (before, after) = (flatten(old), flatten(new));
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            let secret = SECRETS.iter().any(|s| is_under(k, s));
            let show =
                |v: Option<&String>| v.map(|v| if secret { "(hidden)".into() } else { v.clone() });
            Change {
                key: k.clone(),
                from: show(before.get(k)),
                to: show(after.get(k)),
                needs_restart: needs_restart(k),
            }
        })
        .collect()
}

/// Every leaf of the configuration (defaults applied) by dotted key; absent options are
/// left out.
fn flatten(config: &Config) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match serde_json::to_value(config) {
        Ok(v) => walk(&v, String::new(), &mut out),
        // Plain data: serialising it cannot fail; were it to, every key would read changed.
        Err(e) => {
            out.insert(String::new(), e.to_string());
        }
    }
    out
}

fn walk(v: &serde_json::Value, key: String, out: &mut BTreeMap<String, String>) {
    use serde_json::Value;
    match v {
        Value::Null => {}
        Value::Object(map) => {
            for (k, v) in map {
                let key = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                walk(v, key, out);
            }
        }
        // Lists of tables are numbered; lists of plain values are one value.
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, format!("{key}[{i}]"), out);
            }
        }
        Value::String(text) => {
            out.insert(key, text.clone());
        }
        other => {
            out.insert(key, other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[instance]\nname = \"a\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:5060\"\n\
             [[pair]]\nname = \"p\"\nprimary = \"10.0.0.1:5060\"\nbackup = \"10.0.0.2:5060\"\n{extra}"
        );
        match Config::from_toml_str(&text) {
            Ok(c) => c,
            Err(e) => panic!("test config: {e}"),
        }
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert!(changes(&config(""), &config("")).is_empty());
    }

    #[test]
    fn a_changed_value_is_named_with_both_values() {
        let c = changes(&config(""), &config("[overload]\ninvite_rate = 40\n"));
        assert_eq!(
            c,
            [Change {
                key: "overload.invite_rate".into(),
                from: Some("0".into()),
                to: Some("40".into()),
                needs_restart: false,
            }]
        );
        assert_eq!(c[0].to_string(), "overload.invite_rate: 0 -> 40");
    }

    #[test]
    fn an_added_pair_and_a_changed_member_are_keys_of_their_own() {
        let old = config("");
        let new = Config {
            pair: {
                let mut p = old.pair.clone();
                p[0].backup = "10.0.0.3:5060".into();
                let mut q = p[0].clone();
                q.name = "q".into();
                p.push(q);
                p
            },
            ..old.clone()
        };
        let keys: Vec<String> = changes(&old, &new).into_iter().map(|c| c.key).collect();
        assert!(keys.contains(&"pair[0].backup".to_string()), "{keys:?}");
        assert!(keys.contains(&"pair[1].name".to_string()), "{keys:?}");
        assert!(keys.contains(&"pair[1].primary".to_string()), "{keys:?}");
        assert!(!keys.iter().any(|k| k.starts_with("pair[0].primary")));
    }

    #[test]
    fn listen_sockets_and_the_flow_key_need_a_restart_and_secrets_stay_hidden() {
        let old = config("[flow]\ntoken_key = \"0123456789abcdef0123456789abcdef\"\n");
        let mut new = config("[flow]\ntoken_key = \"fedcba9876543210fedcba9876543210\"\n");
        new.listen[0].address = "127.0.0.1:5070".into();
        let c = changes(&old, &new);
        let listen = c.iter().find(|c| c.key == "listen[0].address");
        assert!(listen.is_some_and(|c| c.needs_restart), "{c:?}");
        let key = c.iter().find(|c| c.key == "flow.token_key");
        assert!(
            key.is_some_and(|c| c.needs_restart && c.to.as_deref() == Some("(hidden)")),
            "{c:?}"
        );
        assert!(
            !needs_restart("listener_count"),
            "a prefix is not a section"
        );
        assert!(needs_restart("tls.cert"));
        assert!(!needs_restart("health.oos_check"));
    }
}
