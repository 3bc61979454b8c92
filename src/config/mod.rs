//! Configuration: one TOML file plus `SIPPOOL__SECTION__KEY` environment overrides.
//!
//! This module owns loading, defaults and validation. Every error names the key it is about
//! (`pair[0].primary: ...`), and unknown keys are errors, not silence. It must not open
//! sockets or start anything: `sippool check-config` runs exactly this code and nothing more.
//!
//! Layout, one concept per file; every item keeps its path `crate::config::Name`:
//! - this file: loading (the file, then `SIPPOOL__` environment overrides), [`ConfigError`],
//!   and the re-exports;
//! - `schema`: the serde structs that mirror the TOML file, with their defaults;
//! - `validate`: [`Config::validate`], every check that names a key, and the validated
//!   [`Settings`] with everything it holds;
//! - `diff`: what changed between two configurations, key by key, and which keys cannot
//!   change without a restart (a reload's report).

use std::fmt;
use std::path::Path;

pub use crate::sip::addr::{HostPort, Listener};
pub use crate::sip::proxy::{Pair, StaticRoute};

mod diff;
mod pool;
mod schema;
mod validate;

pub use diff::{changes, Change};
pub use pool::{relay_address, PoolSettings};
pub use schema::{
    Config, DnsConfig, FlowConfig, HealthConfig, HttpConfig, InstanceConfig, KeepaliveConfig,
    LimitsConfig, ListenConfig, LogConfig, OverloadConfig, PairConfig, PoolConfig, RoutingConfig,
    RuntimeConfig, StaticRouteConfig, TimersConfig, TlsConfig, Workers,
};
pub use validate::{log_filter, ClientAuth, Keepalive, Settings, TlsSettings};

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, such as `pair[0].primary`; empty when the file itself is the problem.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Loads `path` (TOML) with `SIPPOOL__SECTION__KEY` overrides from the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(err("", format!("config file {} not found", path.display())));
        }
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("SIPPOOL")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(env),
            )
            .build()
            .map_err(from_config_error)?;
        raw.try_deserialize::<Config>().map_err(from_config_error)
    }

    /// Parses TOML text without environment overrides (tests, embedding).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(from_config_error)?
            .try_deserialize::<Config>()
            .map_err(from_config_error)
    }
}

fn from_config_error(e: config::ConfigError) -> ConfigError {
    // The config crate's messages already carry the key (`... for key `health.oos_check``);
    // surface them whole, but pull the key out where it is given so callers can match on it.
    let text = e.to_string();
    let key = extract_key(&text).unwrap_or_default();
    ConfigError { key, problem: text }
}

fn extract_key(text: &str) -> Option<String> {
    let start = text.find("key `")? + 5;
    let rest = text.get(start..)?;
    let end = rest.find('`')?;
    rest.get(..end).map(str::to_string)
}

/// Loads and validates in one step, as `run` and `check-config` do.
pub fn load_settings(path: &Path) -> Result<Settings, ConfigError> {
    Config::load(path)?.validate()
}

#[cfg(test)]
mod tests;
