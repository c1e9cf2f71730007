//! Profiles: named tenants in `b2b-convert.toml`, for administrators and service providers who
//! handle several, instead of one environment file per tenant that is a wrong `source` away from
//! working a run with another tenant's credentials.
//!
//! `--profile NAME` (or `B2B_PROFILE`) reads `[profiles.NAME]` from `b2b-convert.toml` in the
//! working directory, else from `$XDG_CONFIG_HOME/b2b-convert/` (`~/.config/b2b-convert/`).
//! A profile fills in what neither the command line nor the environment gives: its keys become
//! the environment variables the sign-in already reads (`AZURE_TENANT_ID`, …) only where those
//! are unset, and its `db` becomes `B2B_DB` (what `--db` reads) likewise. So flags beat the
//! environment, which beats the profile, by construction. A profile never holds a secret.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's name, in the working directory or the configuration directory.
pub const FILE_NAME: &str = "b2b-convert.toml";

/// A profile file or name that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {message}")]
    Unreadable { path: String, message: String },
    #[error(
        "{path}, line {line}: a profile never holds a secret (`{key}`): put it in the environment \
         (AZURE_CLIENT_SECRET) or use a certificate file (certificate_path)"
    )]
    Secret {
        path: String,
        line: usize,
        key: String,
    },
    #[error("no profile `{name}` in {path}")]
    Unknown { name: String, path: String },
    #[error("--profile {name}: no {FILE_NAME} in the working directory or {config_dir}")]
    NoFile { name: String, config_dir: String },
}

/// One `[profiles.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub auth: Option<String>,
    pub certificate_path: Option<String>,
    pub graph_url: Option<String>,
    pub login_url: Option<String>,
    pub db: Option<String>,
}

impl Profile {
    /// The profile's database: its `db`, else `NAME.db`, so two tenants never share a queue by
    /// accident.
    pub fn db(&self, name: &str) -> String {
        self.db.clone().unwrap_or_else(|| format!("{name}.db"))
    }

    /// The environment variables the profile stands for, by the names the sign-in reads.
    pub fn variables(&self) -> Vec<(&'static str, &str)> {
        [
            ("AZURE_TENANT_ID", &self.tenant_id),
            ("AZURE_CLIENT_ID", &self.client_id),
            ("B2B_AUTH", &self.auth),
            ("AZURE_CLIENT_CERTIFICATE_PATH", &self.certificate_path),
            ("B2B_GRAPH_URL", &self.graph_url),
            ("B2B_LOGIN_URL", &self.login_url),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// Every profile of a file's text. A key naming a secret is refused with its line before the
/// TOML is even parsed, so a secret never reaches an error message.
pub fn parse(path: &str, text: &str) -> Result<BTreeMap<String, Profile>, ProfileError> {
    for (i, line) in text.lines().enumerate() {
        let key = line.trim_start().split('=').next().unwrap_or("").trim();
        let key = key.trim_matches(|c| c == '"' || c == '\'');
        if line.contains('=') && is_secret_key(key) {
            return Err(ProfileError::Secret {
                path: path.to_string(),
                line: i + 1,
                key: key.to_string(),
            });
        }
    }
    toml::from_str::<File>(text)
        .map(|f| f.profiles)
        .map_err(|e| {
            // Where, then what; the quoted source line between them is left out.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let at = lines.next().unwrap_or("");
            let what = lines.next_back().unwrap_or("");
            ProfileError::Unreadable {
                path: path.to_string(),
                message: format!("{at}: {what}"),
            }
        })
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "client_secret" || key.ends_with("_secret") || key == "password"
}

/// Where profiles are read from: the working directory's file, else the configuration
/// directory's.
pub fn locate(cwd: &Path, config_dir: Option<&Path>) -> Option<PathBuf> {
    let here = cwd.join(FILE_NAME);
    if here.is_file() {
        return Some(here);
    }
    config_dir
        .map(|d| d.join("b2b-convert").join(FILE_NAME))
        .filter(|p| p.is_file())
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

/// A profiles file: where it was read and its profiles by name.
pub type Profiles = (PathBuf, BTreeMap<String, Profile>);

/// Reads the profiles file (`None`: there is none).
pub fn load() -> Result<Option<Profiles>, ProfileError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let Some(path) = locate(&cwd, config_dir().as_deref()) else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| ProfileError::Unreadable {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    Ok(Some((path, parse(&shown, &text)?)))
}

/// The profile the command line (`--profile NAME`, `--profile=NAME`) or `B2B_PROFILE` names.
pub fn requested(args: &[OsString]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--profile" {
            return it.next().map(|v| v.to_string_lossy().into_owned());
        }
        if let Some(v) = a.strip_prefix("--profile=") {
            return Some(v.to_string());
        }
    }
    std::env::var("B2B_PROFILE").ok().filter(|v| !v.is_empty())
}

/// Applies the requested profile, if any: each of its variables (and `B2B_DB`, its database) is
/// set where the environment has none, so the command line and the environment keep priority.
/// Called once at start-up, before any thread exists. Returns the profile's name.
pub fn apply(args: &[OsString]) -> Result<Option<String>, ProfileError> {
    let Some(name) = requested(args) else {
        return Ok(None);
    };
    let Some((path, profiles)) = load()? else {
        return Err(ProfileError::NoFile {
            name,
            config_dir: config_dir()
                .map(|d| d.join("b2b-convert").display().to_string())
                .unwrap_or_else(|| "the configuration directory".into()),
        });
    };
    let profile = profiles.get(&name).ok_or_else(|| ProfileError::Unknown {
        name: name.clone(),
        path: path.display().to_string(),
    })?;
    let db = profile.db(&name);
    for (var, value) in profile
        .variables()
        .into_iter()
        .chain([("B2B_DB", db.as_str())])
    {
        if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
            std::env::set_var(var, value);
        }
    }
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
# two customers of a service provider
[profiles.contoso]
tenant_id = "a2600000-0000-4000-8000-000000000001"
client_id = "11111111-0000-4000-8000-000000000001"
auth = "certificate"
certificate_path = "/etc/b2b/contoso.pem"

[profiles.fabrikam]
tenant_id = "fabrikam.onmicrosoft.com"
db = "/srv/b2b/fabrikam-queue.db"
"#;

    #[test]
    fn profiles_parse_and_default_their_database_to_their_name() {
        let p = parse("b2b-convert.toml", FILE).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p["contoso"].db("contoso"), "contoso.db");
        assert_eq!(p["fabrikam"].db("fabrikam"), "/srv/b2b/fabrikam-queue.db");
        assert_eq!(
            p["contoso"].variables(),
            vec![
                ("AZURE_TENANT_ID", "a2600000-0000-4000-8000-000000000001"),
                ("AZURE_CLIENT_ID", "11111111-0000-4000-8000-000000000001"),
                ("B2B_AUTH", "certificate"),
                ("AZURE_CLIENT_CERTIFICATE_PATH", "/etc/b2b/contoso.pem"),
            ]
        );
    }

    #[test]
    fn a_secret_is_refused_naming_its_line_and_never_its_value() {
        let text = format!("{FILE}\n[profiles.leaky]\nclient_secret = \"s3cr3t-value\"\n");
        let err = parse("b2b-convert.toml", &text).unwrap_err().to_string();
        let line = text
            .lines()
            .position(|l| l.starts_with("client_secret"))
            .unwrap()
            + 1;
        assert!(err.contains(&format!("line {line}")), "{err}");
        assert!(err.contains("client_secret"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        let quoted = "[profiles.x]\n\"CLIENT_SECRET\" = \"v\"\n";
        assert!(matches!(
            parse("f", quoted),
            Err(ProfileError::Secret { line: 2, .. })
        ));
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_errors() {
        let err = parse("f", "[profiles.x]\ntenant = \"t\"\n").unwrap_err();
        assert!(err.to_string().contains("tenant"), "{err}");
        assert!(parse("f", "[profiles.x\n").is_err());
    }

    #[test]
    fn the_profile_comes_from_the_command_line_or_the_environment() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            requested(&args(&["b2b-convert", "--profile", "contoso", "runs"])),
            Some("contoso".into())
        );
        assert_eq!(
            requested(&args(&["b2b-convert", "runs", "--profile=fabrikam"])),
            Some("fabrikam".into())
        );
        assert_eq!(
            requested(&args(&["b2b-convert", "run", "--", "--profile", "x"])),
            std::env::var("B2B_PROFILE").ok().filter(|v| !v.is_empty())
        );
    }

    #[test]
    fn the_working_directory_wins_over_the_configuration_directory() {
        let cwd = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        assert_eq!(locate(cwd.path(), Some(config.path())), None);
        let in_config = config.path().join("b2b-convert").join(FILE_NAME);
        std::fs::create_dir_all(in_config.parent().unwrap()).unwrap();
        std::fs::write(&in_config, FILE).unwrap();
        assert_eq!(locate(cwd.path(), Some(config.path())), Some(in_config));
        std::fs::write(cwd.path().join(FILE_NAME), FILE).unwrap();
        assert_eq!(
            locate(cwd.path(), Some(config.path())),
            Some(cwd.path().join(FILE_NAME))
        );
    }
}
