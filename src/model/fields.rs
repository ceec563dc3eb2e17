//! The Metering Service model's field constraints, shared by the emulator (which enforces them as
//! the service does) and ingest (which refuses an event the service would refuse later).
//!
//! The model's lengths are counted as the service counts them: in UTF-16 code units
//! ([`service_len`]), so a character outside the Basic Multilingual Plane (an emoji) counts twice.

/// Longest dimension, customer id or customer identifier the model allows, in UTF-16 code units.
pub const MAX_NAME_CHARS: usize = 255;
/// Most tags in one usage allocation.
pub const MAX_TAGS: usize = 5;
/// Longest tag key and value, in UTF-16 code units (the tag pattern admits only ASCII, so these
/// are also bytes).
pub const MAX_TAG_KEY_CHARS: usize = 100;
pub const MAX_TAG_VALUE_CHARS: usize = 256;
/// Most usage allocations (distinct tag sets) in one record.
pub const MAX_ALLOCATIONS: usize = 2500;

pub const PRODUCT_CODE_PATTERN: &str = "^[-a-zA-Z0-9/=:_.@]*$";
pub const TAG_PATTERN: &str = "^[a-zA-Z0-9+ -=._:\\/@]+$";
pub const ACCOUNT_ID_PATTERN: &str = "^[0-9]+$";
pub const DECIMAL_PATTERN: &str = "^(0|[1-9][0-9]{0,9})(\\.[0-9]{1,6})?$";
pub const LICENSE_ARN_PATTERN: &str = "^arn:aws[a-zA-Z-]*:[A-Za-z0-9][A-Za-z0-9_/.-]{0,62}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9][A-Za-z0-9:_/+=,@.-]{0,1023}$";

/// The length of `text` as the service measures it: UTF-16 code units.
pub fn service_len(text: &str) -> usize {
    text.encode_utf16().count()
}

pub fn is_product_code(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_alphanumeric() || "-/=:_.@".contains(c))
}

/// The model's tag pattern. Its ` -=` is a character range (space to `=`), so it admits far more
/// punctuation than it seems to; the service applies it as written, and so does the emulator.
pub fn is_tag_text(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_alphabetic() || (' '..='=').contains(&c) || c == '_' || c == '@')
}

pub fn is_license_arn(text: &str) -> bool {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    let class = |s: &str, extra: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    let head_then = |s: &str, extra: &str, max_rest: usize| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.len() - 1 <= max_rest
            && class(chars.as_str(), extra)
    };
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1]
            .strip_prefix("aws")
            .is_some_and(|r| r.chars().all(|c| c.is_ascii_alphabetic() || c == '-'))
        && head_then(parts[2], "_/.-", 62)
        && parts[3].len() <= 63
        && class(parts[3], "_/.-")
        && parts[4].len() <= 63
        && class(parts[4], "_/.-")
        && head_then(parts[5], ":_/+=,@.-", 1023)
}

/// `CustomerAWSAccountId`: digits only.
pub fn is_account_id(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_pattern_is_applied_as_written() {
        assert!(is_tag_text("team=a b/c:d@e_f.g+h"));
        assert!(is_tag_text("(quoted)!#$%&*,;<"), "space..= is a range in the model's pattern");
        assert!(!is_tag_text("brace{"));
        assert!(!is_tag_text("caf\u{e9}"));
        assert!(!is_tag_text("a>b"));
    }

    #[test]
    fn lengths_are_utf16_code_units() {
        assert_eq!(service_len("requests"), 8);
        assert_eq!(service_len("caf\u{e9}"), 4, "a BMP character is one unit");
        assert_eq!(service_len("\u{1F600}"), 2, "an emoji is a surrogate pair");
        assert_eq!(service_len(&"\u{1F600}".repeat(200)), 400);
    }

    #[test]
    fn license_arn_pattern() {
        assert!(is_license_arn("arn:aws:license-manager::123456789012:license/l-0123456789abcdef"));
        assert!(is_license_arn("arn:aws-us-gov:license-manager:us-gov-west-1:123456789012:license:l-1"));
        assert!(!is_license_arn("arn:aws:license-manager::123456789012"));
        assert!(!is_license_arn("arn:azure:x::1:y"));
        assert!(!is_license_arn("arn:aws::::license"));
    }
}
