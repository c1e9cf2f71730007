//! `--only PATH`: the file naming the users one invocation works (a pilot of named, consenting
//! users inside a larger run, or the few users `export-links` found without a link). One object
//! id or UPN a line; blank lines and `#` comments (a whole line, or after whitespace) are
//! ignored. Shared by every command that takes `--only`; matching the names against a run is
//! the command's business.

use std::collections::BTreeSet;
use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};

use crate::item::UserKey;

/// Far beyond any pilot list (a million ids is 37 MB), small enough that `/dev/zero` or a wrong
/// file fails at once instead of filling memory.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Entra's UPN limit is 113 characters; anything much longer is not a name.
pub const MAX_NAME: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum OnlyError {
    #[error("--only {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("--only {path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("--only {path} names nobody (only blank lines and comments)")]
    Empty { path: PathBuf },
}

/// The users a `--only` file names, each once, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlyList {
    pub keys: Vec<UserKey>,
}

impl OnlyList {
    /// Reads and checks the whole file before anything is sent.
    pub fn read(path: &Path) -> Result<OnlyList, OnlyError> {
        let io = |e: std::io::Error| OnlyError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut reader = std::io::BufReader::new(file.take(MAX_BYTES + 1));
        let mut keys = Vec::new();
        let mut seen = BTreeSet::new();
        let (mut line_no, mut read) = (0u64, 0u64);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // A line is read with a bound, so a file without line breaks cannot fill memory.
            let n = (&mut reader)
                .take(MAX_NAME as u64 * 4 + 2)
                .read_until(b'\n', &mut buf)
                .map_err(io)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            line_no += 1;
            if read > MAX_BYTES {
                return Err(OnlyError::Io {
                    path: path.to_path_buf(),
                    message: format!("larger than {} MiB", MAX_BYTES / (1024 * 1024)),
                });
            }
            let line_err = |message: String| OnlyError::Line {
                path: path.to_path_buf(),
                line: line_no,
                message,
            };
            if !buf.ends_with(b"\n") && n > MAX_NAME * 4 {
                return Err(line_err(format!("longer than {MAX_NAME} characters")));
            }
            let text = std::str::from_utf8(&buf).map_err(|_| line_err("not UTF-8 text".into()))?;
            let Some(name) = parse_line(text) else {
                continue;
            };
            if name.chars().count() > MAX_NAME {
                return Err(line_err(format!("longer than {MAX_NAME} characters")));
            }
            let key = key_of(name).ok_or_else(|| {
                line_err(format!(
                    "`{name}` is neither an object id nor a user principal name"
                ))
            })?;
            if seen.insert(key.normalized()) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(OnlyError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(OnlyList { keys })
    }

    /// The names as written (object ids lower-cased), for matching against a run's items.
    pub fn names_as_text(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.value().to_string()).collect()
    }

    /// Whether the list names the user with this object id or UPN.
    pub fn names(&self, user_id: Option<&str>, upn: Option<&str>) -> bool {
        self.keys.iter().any(|k| match k {
            UserKey::Id(id) => user_id.is_some_and(|u| u.eq_ignore_ascii_case(id)),
            UserKey::UserPrincipalName(n) => upn.is_some_and(|u| u.eq_ignore_ascii_case(n)),
        })
    }
}

/// The name on one line, without its comment and surrounding blanks; `None` for a line with
/// none. A `#` starts a comment at the line's start or after whitespace, so a guest UPN such
/// as `a_b.com#EXT#@t.onmicrosoft.com` stays whole.
fn parse_line(line: &str) -> Option<&str> {
    let line = line.trim_start_matches('\u{feff}');
    let mut end = line.len();
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_blank {
            end = i;
            break;
        }
        prev_blank = c.is_whitespace();
    }
    let name = line[..end].trim();
    (!name.is_empty()).then_some(name)
}

/// An object id (a GUID) or a UPN (`local@domain`, no blanks).
fn key_of(name: &str) -> Option<UserKey> {
    if uuid::Uuid::try_parse(name).is_ok() {
        return Some(UserKey::Id(name.to_ascii_lowercase()));
    }
    let (local, domain) = name.split_once('@')?;
    let valid = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !name.chars().any(char::is_whitespace);
    valid.then(|| UserKey::UserPrincipalName(name.to_string()))
}

/// Reads a `--only` file into its names, in file order, each once.
pub fn read(path: &Path) -> Result<Vec<String>, OnlyError> {
    OnlyList::read(path).map(|list| list.names_as_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &[u8]) -> Result<OnlyList, OnlyError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("only.txt");
        std::fs::write(&path, text).unwrap();
        OnlyList::read(&path)
    }

    #[test]
    fn names_comments_and_blank_lines() {
        let list = read(
            b"# pilot, week 1\n\
              3535DF92-088C-5E62-A2D6-4E3CFA0512E6\n\
              \n\
              ana@contoso.com   # consented by mail\n\
              a_fabrikam.com#EXT#@contoso.onmicrosoft.com\r\n\
              ana@contoso.com\n",
        )
        .unwrap();
        assert_eq!(
            list.keys,
            vec![
                UserKey::Id("3535df92-088c-5e62-a2d6-4e3cfa0512e6".into()),
                UserKey::UserPrincipalName("ana@contoso.com".into()),
                UserKey::UserPrincipalName("a_fabrikam.com#EXT#@contoso.onmicrosoft.com".into()),
            ]
        );
        assert!(list.names(Some("3535df92-088c-5e62-a2d6-4e3cfa0512e6"), None));
        assert!(list.names(None, Some("ANA@contoso.com")));
        assert!(!list.names(Some("other"), Some("bob@contoso.com")));
    }

    #[test]
    fn unusable_files_are_refused_with_the_line() {
        let rows: [(&[u8], &str); 4] = [
            (b"# nothing\n\n", "names nobody"),
            (
                b"ana@contoso.com\nnot a name\n",
                "line 2: `not a name` is neither",
            ),
            (b"\xff\xfe\n", "line 1: not UTF-8"),
            (&[b'a'; 5_000], "line 1: longer than 256"),
        ];
        for (text, want) in rows {
            let err = read(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let missing = OnlyList::read(Path::new("/nonexistent/only.txt")).unwrap_err();
        assert!(missing
            .to_string()
            .starts_with("--only /nonexistent/only.txt"));
    }
}
