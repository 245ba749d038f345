//! Building the effective configuration from its layers.

use super::Config;
use config::{Environment, File, FileFormat};
use std::collections::HashMap;
use std::path::PathBuf;

/// Environment variables that start with `HERALD_` but are not configuration keys.
const NOT_KEYS: &[&str] = &["HERALD_CONFIG", "HERALD_URL", crate::sources::ABORT_BEFORE_ACK];

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "cors.allowed_origins",
    "cors.allowed_methods",
    "cors.allowed_headers",
    "access.publish_origins",
    "access.trusted_proxies",
    "access.jwt.algorithms",
    "access.jwt.issuer",
    "access.jwt.audience",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration: {0}")]
    Layer(String),
}

/// The layers above the file: where the file is, and the flags given on the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config`; falls back to `HERALD_CONFIG`, then to `./herald.toml` if it exists.
    pub config_path: Option<PathBuf>,
    /// Flags as (key, value) pairs, e.g. `("listen", "0.0.0.0:8080")`. They win over everything.
    pub flags: Vec<(&'static str, String)>,
}

/// Builds the configuration: defaults < file < `HERALD_…` variables (from `env`) < flags.
pub fn load(overrides: &Overrides, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("HERALD_")).collect();
    let mut builder = config::Config::builder();

    let path = overrides.config_path.clone().or_else(|| env.get("HERALD_CONFIG").map(PathBuf::from));
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::File { path: path.display().to_string(), message: e.to_string() })?;
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
            // config's own errors name the key but not the file; keep the path for ours.
            check_toml_syntax(&text).map_err(|message| ConfigError::File { path: path.display().to_string(), message })?;
        }
        None => {
            if std::path::Path::new("herald.toml").exists() {
                builder = builder.add_source(File::new("herald.toml", FileFormat::Toml));
            }
        }
    }

    let vars: config::Map<String, String> = env.into_iter().filter(|(k, _)| !NOT_KEYS.contains(&k.as_str())).collect();
    let names: Vec<String> = vars.keys().cloned().collect();
    let mut environment =
        Environment::with_prefix("HERALD").prefix_separator("_").separator("__").try_parsing(true).list_separator(",").source(Some(vars));
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    builder = builder.add_source(environment);

    for (key, value) in &overrides.flags {
        builder = builder.set_override(*key, value.as_str()).map_err(|e| ConfigError::Layer(e.to_string()))?;
    }
    let layered = builder.build().map_err(|e| ConfigError::Layer(e.to_string()))?;
    let config: Config = layered.try_deserialize().map_err(|e| ConfigError::Layer(from_environment(e.to_string(), &names)))?;
    config.validate()?;
    Ok(config)
}

/// An unknown key that came from a `HERALD_…` variable says so: a secret kept in, say,
/// `HERALD_JWT_SECRET` for a `secret_env` setting is read as the key `jwt_secret`.
fn from_environment(message: String, vars: &[String]) -> String {
    let unknown = message.split('`').nth(1).filter(|_| message.starts_with("unknown field"));
    let var = unknown.and_then(|field| vars.iter().find(|v| v.to_ascii_lowercase().ends_with(&field.to_ascii_lowercase())));
    match var {
        Some(var) => format!(
            "{message} (from the environment variable {var}: variables starting with HERALD_ are configuration keys; name a variable that holds a secret without that prefix)"
        ),
        None => message,
    }
}

fn check_toml_syntax(text: &str) -> Result<(), String> {
    text.parse::<toml::Table>().map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn token_settings_come_from_the_environment_lists_included() {
        let config = load(
            &Overrides::default(),
            env(&[
                ("HERALD_ACCESS__SUBSCRIBE__JWT", "true"),
                ("HERALD_ACCESS__JWT__SECRET", "s3cr3t"),
                ("HERALD_ACCESS__JWT__ALGORITHMS", "HS256,HS512"),
                ("HERALD_ACCESS__JWT__AUDIENCE", "herald"),
                ("HERALD_ACCESS__JWT__CLAIMS__USER", "/user/id/opaque_id"),
            ]),
        )
        .unwrap();
        assert!(config.access.subscribe.jwt);
        assert_eq!(config.access.jwt.algorithms, ["HS256", "HS512"]);
        assert_eq!(config.access.jwt.audience, ["herald"]);
        assert_eq!(config.access.jwt.claims.user, "/user/id/opaque_id");
    }

    #[test]
    fn a_secret_kept_under_the_herald_prefix_is_explained() {
        let err = load(&Overrides::default(), env(&[("HERALD_JWT_SECRET", "x")])).unwrap_err().to_string();
        assert!(err.contains("unknown field `jwt_secret`") && err.contains("environment variable HERALD_JWT_SECRET"), "{err}");
    }
}
