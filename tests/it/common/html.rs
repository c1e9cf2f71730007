//! The HTML well-formedness checker, one copy for the report tests of both kinds: the
//! integration tests use it as `common::html`, the HTML renderer's unit tests include this file
//! by path (`src/report/html.rs`), so it may use nothing but `std`.

/// Elements that have no closing tag.
const VOID: [&str; 14] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// Checks every opened non-void tag is closed in order; skips `<script>`/`<style>` bodies and
/// comments. Returns the text of every tag seen (between `<` and `>`), for further checks.
pub fn check_balanced(html: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut tags = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open..];
        if rest.starts_with("<!--") {
            let end = rest.find("-->").expect("unclosed comment");
            rest = &rest[end + 3..];
            continue;
        }
        let end = rest.find('>').expect("unclosed tag");
        let tag = &rest[1..end];
        tags.push(tag.to_string());
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            assert!(tag.eq_ignore_ascii_case("!DOCTYPE html"), "<{tag}>");
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().unwrap_or_else(|| panic!("stray </{name}>"));
            assert_eq!(top, name.trim(), "mismatched close");
            continue;
        }
        let name = tag_name(tag);
        assert!(!name.is_empty(), "bad tag <{tag}>");
        if tag.ends_with('/') || VOID.contains(&name.as_str()) {
            continue;
        }
        if name == "script" || name == "style" {
            let close = format!("</{name}>");
            let end = rest.find(&close).expect("unclosed raw text element");
            rest = &rest[end..];
        }
        stack.push(name);
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    tags
}

/// The names of the elements opened in `html`, in order, after checking it is balanced.
pub fn element_names(html: &str) -> Vec<String> {
    check_balanced(html)
        .iter()
        .filter(|t| !t.starts_with('/') && !t.starts_with('!'))
        .map(|t| tag_name(t))
        .collect()
}

/// `td class="n"` → `td`.
fn tag_name(tag: &str) -> String {
    tag.chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}
