//! The rule for names and ids of federations, regions, zones, nodes and proxies, shared by
//! configuration validation and topology validation so both say the same thing.

/// Longest allowed name.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a name: 1 to 63 of `a-z 0-9 - _ .`, starting with a letter or digit.
/// Returns what is wrong, in words, or `None` when the name is fine.
pub fn name_problem(name: &str) -> Option<&'static str> {
    let Some(first) = name.chars().next() else {
        return Some("must not be empty");
    };
    if name.len() > MAX_NAME_LEN {
        return Some("must be at most 63 characters");
    }
    if !first.is_ascii_lowercase() && !first.is_ascii_digit() {
        return Some("must start with a lowercase letter or a digit");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if !name.chars().all(allowed) {
        return Some("may only contain lowercase letters, digits, '-', '_' and '.'");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::name_problem;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["eu-west", "eu-west-a-1", "prod", "n1", "node_7.b"] {
            assert_eq!(name_problem(name), None, "{name}");
        }
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        assert_eq!(name_problem(""), Some("must not be empty"));
        assert!(name_problem("-lead").is_some());
        assert!(name_problem("Upper").is_some());
        assert!(name_problem("sp ace").is_some());
        assert!(name_problem(&"x".repeat(64)).is_some());
    }
}
