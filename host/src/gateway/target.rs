//! The request target every gateway plugin decides on, normalised once
//! before routing (RFC 3986 §6.2.2), so that a path that names the same
//! resource as a guarded one in other spelling (`/x/../slow`, `/%73low`,
//! `//slow`) meets the same route and allowlists, and the upstream receives
//! exactly the target the plugins saw.
//!
//! What is done to the path, in order:
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded, other percent-encodings upper-cased (§6.2.2.1, §6.2.2.2);
//! 2. runs of `/` become one (as nginx's `merge_slashes`: upstreams often
//!    treat `//a` as `/a`);
//! 3. dot segments are removed (§5.2.4; `..` never climbs above `/`).
//!
//! Refused with 400, because an upstream may read them as something no
//! plugin saw: an encoded `/`, `\` or `%` (`%2F`, `%5C`, `%25`: decoded
//! later, they would change the path's segments or decode twice), a `\`,
//! a `;` (Java servers strip `;params` from segments), an encoded or raw
//! control character, a byte outside ASCII, a malformed `%`, percent-encoded
//! bytes that are not UTF-8 (`%C0%AE` is an overlong `.` that lenient
//! decoders read as one), and a target that is not a path (`*`,
//! authority-form). The query is passed as sent.

use std::borrow::Cow;

/// Why a request target cannot be normalised safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not an origin-form path (`*`, or no leading `/`).
    #[error("the request target must be a path starting with '/'")]
    NotAPath,
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
    /// An encoding or character upstreams may read differently.
    #[error("the path contains {0}, which Tollgate does not forward")]
    Refused(&'static str),
    /// The bytes the percent-encodings stand for, with the plain characters
    /// around them, are not UTF-8 (an overlong form such as `%C0%AE`, a cut
    /// sequence, a lone continuation byte).
    #[error("the path's percent-encoded bytes are not UTF-8")]
    NotUtf8,
}

/// The normalised form of `path` (see the module documentation).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, TargetError> {
    if !path.starts_with('/') {
        return Err(TargetError::NotAPath);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&merge_slashes(&decoded))))
}

/// True for a path that normalising would leave as it is, and refuse
/// nothing of: no `%`, no `;` or `\`, only visible ASCII, no empty and no
/// dot segment. Most requests are such, and skip the copies.
fn is_normal(path: &str) -> bool {
    let plain = path.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b';' | b'\\'));
    plain && !path.contains("//") && !path.split('/').any(|segment| segment == "." || segment == "..")
}

/// Decodes unreserved characters, upper-cases the other encodings, and
/// refuses what [`normalize`] refuses.
fn decode_unreserved(path: &str) -> Result<String, TargetError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    // What the path stands for once every encoding is decoded: it must be
    // UTF-8, or decoders disagree on what it says.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte != b'%' {
            out.push(plain(byte)?);
            decoded.push(byte);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(TargetError::BadEncoding)?;
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(TargetError::BadEncoding)?;
        decoded.push(value);
        match value {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(value as char),
            b'/' => return Err(TargetError::Refused("an encoded '/' (%2F)")),
            b'\\' => return Err(TargetError::Refused("an encoded '\\' (%5C)")),
            b'%' => return Err(TargetError::Refused("an encoded '%' (%25)")),
            0..=0x1f | 0x7f => return Err(TargetError::Refused("an encoded control character")),
            _ => out.push_str(&format!("%{value:02X}")),
        }
        i += 3;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(TargetError::NotUtf8);
    }
    Ok(out)
}

/// A byte of the path as sent, unless it is one [`normalize`] refuses.
fn plain(byte: u8) -> Result<char, TargetError> {
    match byte {
        b';' => Err(TargetError::Refused("a ';'")),
        b'\\' => Err(TargetError::Refused("a '\\'")),
        0..=0x20 | 0x7f => Err(TargetError::Refused("a control character or space")),
        0x80.. => Err(TargetError::Refused("a byte outside ASCII (it must be percent-encoded)")),
        _ => Ok(byte as char),
    }
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments go, `..` removes the
/// segment before it (none above the root). A trailing `.` or `..` leaves
/// the path ending in `/`, as the RFC's algorithm does.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    for (i, segment) in parts.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    segments.pop();
                }
                if i == last {
                    segments.push("");
                }
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

/// Whether `text` is a `Host` value (RFC 9110 §7.2): `uri-host [":" port]`
/// with a port that fits 16 bits. Refused besides what RFC 3986 refuses: user
/// info (`user@host`) and a `,`, which RFC 3986 allows in a name but which
/// makes `X-Forwarded-Host` read as a list upstream.
pub fn is_valid_host(text: &str) -> bool {
    if text.contains(['@', ',']) {
        return false;
    }
    let Ok(authority) = text.parse::<http::uri::Authority>() else { return false };
    let host = authority.host();
    // An IP literal must be an IPv6 address (RFC 3986 §3.2.2; IPvFuture is
    // refused).
    if let Some(literal) = host.strip_prefix('[') {
        let address = literal.strip_suffix(']').unwrap_or(literal);
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
    }
    let port = &text[host.len()..];
    !host.is_empty()
        && (port.is_empty()
            || port.strip_prefix(':').is_some_and(|port| {
                !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_a_name_or_address_and_an_optional_port() {
        for host in ["api.example", "api.example:8080", "127.0.0.1:1", "[::1]:443", "[::1]", "a-b.example", "[fe80::1]"]
        {
            assert!(is_valid_host(host), "{host}");
        }
        for host in [
            "",
            ":80",
            "b.example, c.example",
            "b.example,c.example",
            "a b",
            "api.example:99999",
            "api.example:",
            "api.example:+80",
            "api.example:80:80",
            "user@api.example",
            "api.example/x",
            "[::1",
            "[zz]",
            "[a]:80",
            "[1.2.3.4]",
            "[v1.x]",
        ] {
            assert!(!is_valid_host(host), "{host}");
        }
    }

    #[test]
    fn the_spellings_of_a_guarded_path_all_normalise_to_it() {
        for path in [
            "/slow/secret",
            "/x/../slow/secret",
            "/./slow/secret",
            "/%73low/secret",
            "//slow/secret",
            "/%2e%2e/slow/secret",
            "/%2E%2E/slow/secret",
            "/open/../slow/secret",
            "/slow/./secret",
            "/slow//secret",
            "/../../slow/secret",
        ] {
            assert_eq!(normalize(path).as_deref(), Ok("/slow/secret"), "{path}");
        }
    }

    #[test]
    fn catalog_spellings_normalise_or_are_refused() {
        let create = "/api/v1/source_definitions/create";
        for path in [
            "/api/v1/source_definitions/%63reate",
            "/api/v1/source%5fdefinitions/create",
            "/api/v1/source_definitions/create/.",
        ] {
            let normal = normalize(path).unwrap();
            assert_eq!(normal.trim_end_matches('/'), create, "{path}");
        }
        for path in [
            "/api/v1/source_definitions/create;x",
            "/api/v1/source_definitions/create%2f",
            "/api/v1/source_definitions/create%2F",
            "/a%5cb",
            "/a\\b",
            "/a%252f",
            "/a%00",
            "/a%",
            "/a%zz",
            "/a%2",
            "/é",
            "*",
            "example.com:443",
        ] {
            assert!(normalize(path).is_err(), "{path} must be refused");
        }
    }

    #[test]
    fn encoded_bytes_that_are_not_utf8_are_refused() {
        for path in [
            // Overlong encodings of '.' and '/': lenient decoders read them
            // as the character.
            "/%C0%AE%C0%AE/slow/secret",
            "/a/%c0%ae",
            "/a%C0%AF",
            "/a%E0%80%AE",
            // A lone continuation byte, a cut sequence, a byte never in UTF-8.
            "/a%A9",
            "/a%C3",
            "/a%C3b",
            "/a%C3/%A9",
            "/a%FF",
            // A UTF-16 surrogate.
            "/a%ED%A0%80",
        ] {
            assert_eq!(normalize(path), Err(TargetError::NotUtf8), "{path}");
        }
        assert_eq!(
            TargetError::NotUtf8.to_string(),
            "the path's percent-encoded bytes are not UTF-8",
            "the reason the client is told"
        );
        assert_eq!(normalize("/caf%C3%A9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(normalize("/%E2%82%AC/%F0%9F%98%80").as_deref(), Ok("/%E2%82%AC/%F0%9F%98%80"));
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_one() {
        for path in ["/", "/a/b/", "/api/v1/items", "/.well-known/x", "/a..b/c.", "/~user/x-y_z", "/a/b/c.json"] {
            assert!(is_normal(path), "{path}");
            let full = remove_dot_segments(&merge_slashes(&decode_unreserved(path).unwrap()));
            assert_eq!(normalize(path).unwrap(), full, "{path}");
        }
        for path in ["/a//b", "/a/./b", "/a/..", "/%61", "/a;b", "/a b"] {
            assert!(!is_normal(path), "{path}");
        }
    }

    #[test]
    fn other_encodings_are_kept_upper_cased() {
        assert_eq!(normalize("/a%20b/%c3%a9").as_deref(), Ok("/a%20b/%C3%A9"));
        assert_eq!(normalize("/").as_deref(), Ok("/"));
        assert_eq!(normalize("/a/b/").as_deref(), Ok("/a/b/"));
        assert_eq!(normalize("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(normalize("/..").as_deref(), Ok("/"));
        assert_eq!(normalize("/.well-known/x").as_deref(), Ok("/.well-known/x"));
    }
}
