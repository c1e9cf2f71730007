//! Graph's email-address syntax (Graph's documentation, invitations): the one rule both the
//! validator (which blocks a user before anything is sent) and the emulator (which refuses like
//! Graph) apply, so the tool and its simulated tenant can never disagree about an address.

/// Characters the invitation API refuses in an email's local part (Graph's documentation).
pub const FORBIDDEN_LOCAL: &[char] = &[
    '~', '!', '#', '$', '%', '^', '&', '*', '(', ')', '+', '=', '[', ']', '{', '}', '\\', '/', '|',
    ';', ':', '"', '<', '>', '?', ',',
];

/// Why `address` cannot be an invitation address, or `None` when it can.
///
/// The rules are the invitation API's (Graph's documentation), not RFC 5322: exactly one `@`; a local
/// part without spaces or any of ``~ ! # $ % ^ & * ( ) + = [ ] { } \ / | ; : " < > ? ,``, not
/// starting or ending with `.` or `-` (`_` is fine anywhere); a domain of at least two
/// dot-separated labels made of ASCII letters, digits and hyphens, none empty and none starting
/// or ending with `-`; at most 254 characters in all.
pub fn email_syntax_error(address: &str) -> Option<String> {
    if address.is_empty() {
        return Some("the address is empty".into());
    }
    if address.chars().count() > 254 {
        return Some("longer than 254 characters".into());
    }
    let (local, domain) = match address.split_once('@') {
        None => return Some("no @".into()),
        Some((_, rest)) if rest.contains('@') => return Some("more than one @".into()),
        Some(parts) => parts,
    };
    if local.is_empty() {
        return Some("empty local part (before @)".into());
    }
    if domain.is_empty() {
        return Some("empty domain (after @)".into());
    }
    if let Some(c) = local.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "local part contains whitespace or control character {c:?}"
        ));
    }
    if let Some(c) = local.chars().find(|c| FORBIDDEN_LOCAL.contains(c)) {
        return Some(format!("local part contains forbidden character `{c}`"));
    }
    for edge in ['.', '-'] {
        if local.starts_with(edge) || local.ends_with(edge) {
            return Some(format!("local part starts or ends with `{edge}`"));
        }
    }
    if !domain.contains('.') {
        return Some("domain has no dot".into());
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Some("domain has an empty label (`..` or a leading or trailing dot)".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Some(format!(
                "domain contains {c:?}: only letters, digits, hyphens and dots are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("domain label `{label}` starts or ends with `-`"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per rule: the address, and whether Graph accepts it. The emulator's
    /// `valid_email` is this function, so the same table holds for it.
    #[test]
    fn local_part_rules_of_graph_notes() {
        let table: &[(&str, bool)] = &[
            ("a@x.com", true),
            ("first.last@fabrikam.com", true),
            // Consecutive dots: Graph's documentation forbids only a leading or trailing `.`.
            ("a..b@x.com", true),
            ("_a_@x.com", true),
            ("a_b-c@x.example", true),
            ("o'neil@x.com", true),
            ("a-b@x.com", true),
            (".a@x.com", false),
            ("a.@x.com", false),
            ("-a@x.com", false),
            ("a-@x.com", false),
            ("a b@x.com", false),
            ("a\u{7}b@x.com", false),
            ("", false),
            ("a", false),
            ("a@", false),
            ("@x.com", false),
            ("a@x", false),
            ("a@b@x.com", false),
            ("a@x..com", false),
            ("a@-x.com", false),
            ("a@x-.com", false),
            ("a@x_y.com", false),
            ("a@bücher.de", false),
        ];
        for (address, accepted) in table {
            assert_eq!(
                email_syntax_error(address).is_none(),
                *accepted,
                "{address:?}: {:?}",
                email_syntax_error(address)
            );
        }
        for c in FORBIDDEN_LOCAL {
            let address = format!("a{c}b@x.com");
            assert!(email_syntax_error(&address).is_some(), "{address}");
        }
        let long = format!("{}@x.com", "a".repeat(250));
        assert!(email_syntax_error(&long).is_some());
    }
}
