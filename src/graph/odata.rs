//! OData in URLs: string literals, `in (…)` lists within Graph's limit, which filters need
//! advanced queries, and percent-encoding of query values.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Graph's limit of values in one `in (…)` clause (16 answer 400 `Request_UnsupportedQuery`).
pub const VALUES_PER_FILTER: usize = 15;

/// Everything but letters, digits and `-._~$(),:/@` is percent-encoded in a query value: spaces
/// become `%20`, never `+`, which Graph could read as a literal plus in an address, and `'`
/// becomes `%27`, as the URL standard does for queries anyway. The kept punctuation is what
/// OData expressions and `$`-options are written with, so logged URLs stay readable.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'$')
    .remove(b'(')
    .remove(b')')
    .remove(b',')
    .remove(b':')
    .remove(b'/')
    .remove(b'@');

/// True when the filter uses operators Graph only supports as an advanced query
/// (`ConsistencyLevel: eventual` and `$count=true`).
pub fn needs_advanced_query(filter: &str) -> bool {
    let f = format!(" {} ", filter.to_ascii_lowercase());
    [
        " ne ",
        "not(",
        " not ",
        "(not ",
        "endswith(",
        " eq null",
        " ne null",
    ]
    .iter()
    .any(|needle| f.contains(needle))
}

/// An OData string literal: quoted, with `'` doubled.
pub fn odata_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `property in ('a','b',…)` filters covering `values`, at most [`VALUES_PER_FILTER`] each.
pub fn in_filters(property: &str, values: &[String]) -> Vec<String> {
    values
        .chunks(VALUES_PER_FILTER)
        .map(|chunk| {
            let list = chunk
                .iter()
                .map(|v| odata_quote(v))
                .collect::<Vec<_>>()
                .join(",");
            format!("{property} in ({list})")
        })
        .collect()
}

/// `k=v&…`, each name and value percent-encoded.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One query name or value, percent-encoded (UTF-8 bytes as `%XX`).
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query(&[("$filter", "mail eq 'a+b@x.com'"), ("$top", "999")]),
            "$filter=mail%20eq%20%27a%2Bb@x.com%27&$top=999"
        );
        assert_eq!(encode_component("José Ø"), "Jos%C3%A9%20%C3%98");
        assert_eq!(encode_component("a&b=c#d?e"), "a%26b%3Dc%23d%3Fe");
        assert_eq!(encode_component("100%"), "100%25");
        assert_eq!(encode_component("id,mail:(x)/y~z_-."), "id,mail:(x)/y~z_-.");
    }

    #[test]
    fn in_lists_hold_at_most_fifteen_quoted_values() {
        let values: Vec<String> = (0..31).map(|i| format!("u{i}")).collect();
        let filters = in_filters("id", &values);
        assert_eq!(filters.len(), 3);
        assert_eq!(filters[2], "id in ('u30')");
        assert_eq!(filters[0].matches(',').count(), 14);
        assert!(filters[0].starts_with("id in ('u0','u1',"));
        assert_eq!(
            in_filters("userPrincipalName", &["o'brien@x.com".into()]),
            ["userPrincipalName in ('o''brien@x.com')"]
        );
        assert!(in_filters("id", &[]).is_empty());
    }

    #[test]
    fn advanced_query_detection() {
        for f in [
            "userType ne 'Member'",
            "not(accountEnabled eq true)",
            "NOT accountEnabled eq true",
            "endsWith(mail,'@fabrikam.com')",
            "onPremisesUserPrincipalName eq null",
            "mail ne null",
        ] {
            assert!(needs_advanced_query(f), "{f}");
        }
        for f in [
            "userType eq 'Guest'",
            "startsWith(displayName,'Ann')",
            "accountEnabled eq true and mail in ('a@b.com')",
            "displayName eq 'Anne Knot'",
            "",
        ] {
            assert!(!needs_advanced_query(f), "{f}");
        }
    }

    #[test]
    fn odata_literals_and_query_encoding() {
        assert_eq!(odata_quote("o'brien"), "'o''brien'");
        assert_eq!(
            encode_query(&[("$filter", "mail eq 'a+b@x.com' & x=1#")]),
            "$filter=mail%20eq%20%27a%2Bb@x.com%27%20%26%20x%3D1%23"
        );
        assert_eq!(encode_component("ü"), "%C3%BC");
    }
}
