//! `--only PATH`: the file naming the users an invocation works (a pilot of named, consenting
//! users inside the same run as everyone else). One object id or UPN a line; blank lines and
//! lines starting with `#` are ignored. Only whole lines are comments: a UPN may hold a `#`
//! (`partner_fabrikam.com#EXT#@contoso.onmicrosoft.com`).

use std::path::Path;

/// A `--only` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OnlyError {
    #[error("--only {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("--only {path}: the file names nobody (only blank lines and # comments)")]
    Empty { path: String },
}

/// The names in the file, in file order, each once (compared case-insensitively), trimmed; a
/// UTF-8 BOM is accepted.
pub fn read(path: &Path) -> Result<Vec<String>, OnlyError> {
    let text = std::fs::read_to_string(path).map_err(|source| OnlyError::Unreadable {
        path: path.display().to_string(),
        source,
    })?;
    let names = parse(&text);
    if names.is_empty() {
        return Err(OnlyError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(names)
}

/// [`read`] on text already in memory.
pub fn parse(text: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    text.trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| seen.insert(l.to_lowercase()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_comments_blanks_and_repeats() {
        let text = "\u{feff}# pilot: users who agreed\r\n\
                    3535df92-088c-5e62-a2d6-4e3cfa0512e6\r\n\
                    \r\n\
                    \tanna@contoso.com  \n\
                    ANNA@contoso.com\n\
                    partner_fabrikam.com#EXT#@contoso.onmicrosoft.com\n\
                    #bob@contoso.com\n";
        assert_eq!(
            parse(text),
            vec![
                "3535df92-088c-5e62-a2d6-4e3cfa0512e6",
                "anna@contoso.com",
                "partner_fabrikam.com#EXT#@contoso.onmicrosoft.com",
            ]
        );
    }

    #[test]
    fn a_file_naming_nobody_or_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("only.txt");
        std::fs::write(&p, "# nobody yet\n\n").unwrap();
        assert!(matches!(read(&p), Err(OnlyError::Empty { .. })));
        let missing = dir.path().join("missing.txt");
        let err = read(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }
}
