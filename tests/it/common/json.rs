//! Reading the lists of a JSON answer or output: the elements of an array and one field of each.

use serde_json::Value;

/// The elements of the JSON array `list` (a test failure, showing `list`, when it is not one).
pub fn elements(list: &Value) -> &[Value] {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
}

/// The string `field` of each element of `list` that `keep` accepts, in order.
pub fn strings_where(list: &Value, field: &str, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    elements(list)
        .iter()
        .filter(|e| keep(e))
        .map(|e| {
            e[field]
                .as_str()
                .unwrap_or_else(|| panic!("no string {field:?} in {e}"))
                .to_string()
        })
        .collect()
}

/// The string `field` of each element of `list`, in order.
pub fn strings(list: &Value, field: &str) -> Vec<String> {
    strings_where(list, field, |_| true)
}

/// The number `field` of each element of `list`, in order.
pub fn numbers(list: &Value, field: &str) -> Vec<u64> {
    elements(list)
        .iter()
        .map(|e| {
            e[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no number {field:?} in {e}"))
        })
        .collect()
}
