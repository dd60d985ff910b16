//! Keeping settings out of what the host says about a plugin. Refusal
//! reasons end up in the log and on the unauthenticated `/plugins` page, and
//! settings hold secrets (a backend token, a list of people): a reason may
//! say where and what kind of value is wrong, never quote it.
//!
//! Two cases:
//! * the settings file does not parse (JSON or YAML): the parser's message
//!   keeps its words and position, and anything it quotes is dropped
//!   ([`parse_error`]);
//! * the settings parsed, and the plugin refused them with a message of its
//!   own (often serde's `invalid type: string "Bearer ..."`): text of the
//!   settings is replaced by `<redacted>` wherever it appears in that
//!   message, as a substring, whatever is next to it (`token abc123.`,
//!   `/abc123/`), and so is every quoted part that is (or holds) a settings
//!   value ([`plugin_message`]). Keys that read like field names (`orgs`,
//!   `backendToken`) are kept, so `unknown field` and `expected one of`
//!   messages stay useful.
//!
//! What counts as settings text: each string value, number and key that is
//! not a field name, whole (also as `{:?}` and JSON escape it), and each
//! word of those at least [`MIN_WORD`] bytes long. A value shorter than that
//! is too common a string (`a`, `on`, `1`) to be replaced everywhere: it is
//! redacted inside quotes (`"..."`, `` `...` ``, `'...'`) only, where it
//! stands apart from letters and digits.
//!
//! A plugin that turns a secret into something else before printing it
//! (decoded, cut short, upper-cased) cannot be caught this way: that is why
//! `/plugins` leaves plugins' own messages out unless asked to.

use std::collections::{HashMap, HashSet};

/// What replaces settings text.
pub const REDACTED: &str = "<redacted>";
/// Longest plugin message kept, in characters; the rest is cut.
pub const MAX_MESSAGE_CHARS: usize = 512;
/// How much of a message is looked at: a plugin may echo its whole settings.
const MAX_SCANNED_BYTES: usize = 64 * 1024;
/// Shorter words are too common to tell a secret from ordinary text
/// (`line`, `at`, `1`); a shorter value is only redacted inside quotes.
const MIN_WORD: usize = 4;
/// Quoted parts checked against the settings one by one; past this, every
/// quoted part with a letter or digit in it is redacted (a bound on time).
const MAX_QUOTES_CHECKED: usize = 64;
/// Bytes compared while looking for settings text in a message; past this,
/// every word of the message is redacted (a bound on time, reached only by a
/// long message about very large settings).
const MAX_COMPARED_BYTES: usize = 1 << 26;
/// Characters that end a piece of a word, besides those that end a word:
/// `a.b/c?d` is also looked for as `a`, `b`, `c` and `d` (those long enough).
const PIECE_ENDS: &str = "./!?&";

/// The settings values (and keys that are not field names) a message must
/// not quote.
#[derive(Debug, Default)]
pub struct SettingsText {
    /// Each string value, key and number, whole.
    values: Vec<String>,
    /// Settings text replaced wherever it appears: values and their words
    /// and pieces, at least [`MIN_WORD`] bytes long, longest first.
    needles: Vec<String>,
    /// Values shorter than [`MIN_WORD`]: replaced inside quotes only.
    short: HashSet<String>,
}

impl SettingsText {
    /// Collects the values of settings given as JSON text (what plugins
    /// get). Text that is not JSON is taken as one value.
    pub fn of_json(json: &str) -> Self {
        let mut text = Self::default();
        let mut needles = HashSet::new();
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(value) => text.collect(&value, &mut needles),
            Err(_) => text.add(json, &mut needles),
        }
        text.needles = needles.into_iter().collect();
        // Longest first: a whole value before its parts (the result is the
        // same either way, every occurrence of each is replaced; the order
        // only makes it reproducible).
        text.needles.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        text
    }

    fn collect(&mut self, value: &serde_json::Value, needles: &mut HashSet<String>) {
        match value {
            serde_json::Value::String(s) => self.add(s, needles),
            serde_json::Value::Number(n) => self.add(&n.to_string(), needles),
            serde_json::Value::Array(items) => items.iter().for_each(|v| self.collect(v, needles)),
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if !is_field_name(key) {
                        self.add(key, needles);
                    }
                    self.collect(v, needles);
                }
            }
            serde_json::Value::Bool(_) | serde_json::Value::Null => {}
        }
    }

    fn add(&mut self, value: &str, needles: &mut HashSet<String>) {
        if value.trim().is_empty() {
            return;
        }
        for word in words(value).chain(pieces(value)) {
            if word.len() >= MIN_WORD {
                needles.insert(word.to_string());
            }
        }
        // The value as written, and as a message would quote it escaped.
        let debug = format!("{value:?}");
        let json = serde_json::to_string(value).unwrap_or_default();
        for form in [value, strip_quotes(&debug), strip_quotes(&json)] {
            if form.len() >= MIN_WORD {
                needles.insert(form.to_string());
            } else if !form.is_empty() {
                self.short.insert(form.to_string());
            }
        }
        self.values.push(value.to_string());
    }

    /// True when quoted `content` is a settings value, a piece of one long
    /// enough to matter, or holds a short value standing apart.
    fn covers(&self, content: &str) -> bool {
        !content.is_empty()
            && (self.values.iter().any(|v| v == content || (content.len() >= MIN_WORD && v.contains(content)))
                || self.holds_short_value(content))
    }

    /// True when a value shorter than [`MIN_WORD`] appears in `content`
    /// with no letter or digit right before or after it: `"ab"`, `"ab!"`,
    /// `"pin=ab"`, not `"tab"`.
    fn holds_short_value(&self, content: &str) -> bool {
        if self.short.is_empty() {
            return false;
        }
        content.char_indices().any(|(start, _)| {
            (start + 1..start + MIN_WORD).filter(|&end| content.is_char_boundary(end)).any(|end| {
                let Some(candidate) = content.get(start..end) else { return false };
                self.short.contains(candidate)
                    && apart(content[..start].chars().next_back(), candidate.chars().next())
                    && apart(content[end..].chars().next(), candidate.chars().next_back())
            })
        })
    }

    /// Marks every occurrence in `text` of settings text at least
    /// [`MIN_WORD`] long. False when that took more than
    /// [`MAX_COMPARED_BYTES`] (the marks are then incomplete).
    fn mark_needles(&self, text: &str, mask: &mut [bool]) -> bool {
        if self.needles.is_empty() {
            return true;
        }
        // Where each MIN_WORD-byte prefix starts in the text: only those
        // places can hold a needle that starts with it.
        let bytes = text.as_bytes();
        let mut starts: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, _) in text.char_indices() {
            if let Some(prefix) = bytes.get(i..i + MIN_WORD) {
                starts.entry(prefix).or_default().push(i);
            }
        }
        let mut budget = MAX_COMPARED_BYTES;
        for needle in &self.needles {
            let needle = needle.as_bytes();
            let Some(places) = starts.get(&needle[..MIN_WORD]) else { continue };
            for &i in places {
                let Some(left) = budget.checked_sub(needle.len()) else { return false };
                budget = left;
                if bytes[i..].starts_with(needle) {
                    mask[i..i + needle.len()].fill(true);
                }
            }
        }
        true
    }

    /// `message` with every quoted part and every word taken from these
    /// settings replaced by [`REDACTED`], cut to [`MAX_MESSAGE_CHARS`].
    pub fn redact(&self, message: &str) -> String {
        let (scanned, cut) = scannable(message);
        let mut mask = vec![false; scanned.len()];
        let mut checked = 0;
        mark_quotes(scanned, &mut mask, true, |content| {
            checked += 1;
            if checked > MAX_QUOTES_CHECKED {
                return content.chars().any(char::is_alphanumeric);
            }
            self.covers(content) || unescape(content).is_some_and(|u| self.covers(&u))
        });
        if !self.mark_needles(scanned, &mut mask) {
            mark_words(scanned, &mut mask);
        }
        shorten(render(scanned, &mask), cut)
    }
}

/// A plugin's own message about its settings (`settings_json`), safe to log
/// and show: see [`SettingsText::redact`].
pub fn plugin_message(message: &str, settings_json: &str) -> String {
    SettingsText::of_json(settings_json).redact(message)
}

/// A JSON or YAML parser's error about a settings file, with whatever it
/// quotes from the file dropped (the file did not parse, so its values are
/// not known): `invalid type: string "..."` becomes `invalid type: string
/// "<redacted>"`, while punctuation such as ``expected `,` or `}` `` stays.
pub fn parse_error(message: &str) -> String {
    let (scanned, cut) = scannable(message);
    let mut mask = vec![false; scanned.len()];
    mark_quotes(scanned, &mut mask, false, |content| content.chars().any(char::is_alphanumeric));
    shorten(render(scanned, &mask), cut)
}

/// True for a key that reads like a field name of a settings schema
/// (letters, `_` and `-`, starting with a letter, no digits): those are the
/// plugin's vocabulary, not data. A token or an address used as a key has
/// digits, dots, `@` or `:` in it, and is treated as a value.
fn is_field_name(key: &str) -> bool {
    key.len() <= 64
        && key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key.chars().all(|c| c.is_ascii_alphabetic() || c == '_' || c == '-')
}

/// The part of `message` that is looked at, and whether it was cut. A cut
/// goes back to the last word boundary, so no half of a word (which would
/// not be recognised) is kept.
fn scannable(message: &str) -> (&str, bool) {
    if message.len() <= MAX_SCANNED_BYTES {
        return (message, false);
    }
    let mut end = MAX_SCANNED_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let head = &message[..end];
    let boundary = head.rfind(|c: char| !is_word_char(c)).unwrap_or(0);
    (&head[..boundary], true)
}

/// Characters words are made of; anything else separates words.
fn is_word_char(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || "\"'`,;:=()[]{}<>\\".contains(c))
}

/// The words of `text`: runs of [`is_word_char`] characters.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !is_word_char(c)).filter(|w| !w.is_empty())
}

/// The pieces of the words of `text`: words cut at [`PIECE_ENDS`] too.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !is_word_char(c) || PIECE_ENDS.contains(c)).filter(|w| !w.is_empty())
}

/// `quoted` without its first and last character (the quotes `{:?}` and
/// JSON put around a string).
fn strip_quotes(quoted: &str) -> &str {
    quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default()
}

/// True when `neighbour` (a character next to a short value, if any) keeps
/// the value apart: it is no letter or digit, or the value's own character
/// on that side (`edge`) is none.
fn apart(neighbour: Option<char>, edge: Option<char>) -> bool {
    neighbour.is_none_or(|c| !c.is_alphanumeric()) || edge.is_some_and(|c| !c.is_alphanumeric())
}

/// Marks the content of each `"..."` and `` `...` `` part of `text` (and
/// `'...'` with `single`) for which `redact(content)` is true. A `"` or
/// `` ` `` left open hides the rest. A `'` opens a quote only after a
/// character that is no letter or digit, and closes one only before such a
/// character, so apostrophes (`plugin's`) are not quotes.
fn mark_quotes(text: &str, mask: &mut [bool], single: bool, mut redact: impl FnMut(&str) -> bool) {
    let mut from = 0;
    while let Some((open, quote)) = next_quote(text, from, single) {
        // Quotes are ASCII: the content starts one byte on.
        let start = open + 1;
        match closing_quote(&text[start..], quote) {
            Some(close) => {
                if redact(&text[start..start + close]) {
                    mask[start..start + close].fill(true);
                }
                from = start + close + 1;
            }
            None if quote == '\'' => from = start,
            None => {
                mask[start..].fill(true);
                return;
            }
        }
    }
}

/// Where the next quote opens in `text` at or after `from`, and which.
fn next_quote(text: &str, from: usize, single: bool) -> Option<(usize, char)> {
    let mut before = text[..from].chars().next_back();
    for (i, c) in text[from..].char_indices() {
        let opens = match c {
            '"' | '`' => true,
            '\'' => single && before.is_none_or(|b| !b.is_alphanumeric()),
            _ => false,
        };
        if opens {
            return Some((from + i, c));
        }
        before = Some(c);
    }
    None
}

/// Where `quote` closes in `text`; inside `"`, a backslash escapes the next
/// character (Rust's `{:?}` and JSON both write `\"`); a `'` closes only
/// before a character that is no letter or digit.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quote == '"' => escaped = true,
            '\'' if quote == '\'' && chars.peek().is_none_or(|&(_, next)| !next.is_alphanumeric()) => {
                return Some(i);
            }
            '\'' if quote == '\'' => {}
            c if c == quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// Quoted text as written by `{:?}` or JSON, with its escapes undone, when
/// it has any.
fn unescape(content: &str) -> Option<String> {
    if !content.contains('\\') {
        return None;
    }
    serde_json::from_str::<String>(&format!("\"{content}\"")).ok()
}

/// Marks every word of `text` at least [`MIN_WORD`] long, and the content
/// of every quoted part with a letter or digit: what is left when the
/// settings could not be looked for in full.
fn mark_words(text: &str, mask: &mut [bool]) {
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        if is_word_char(c) && i < text.len() {
            start.get_or_insert(i);
        } else if let Some(s) = start.take()
            && i - s >= MIN_WORD
        {
            mask[s..i].fill(true);
        }
    }
    mark_quotes(text, mask, true, |content| content.chars().any(char::is_alphanumeric));
}

/// `text` with each run of marked bytes replaced by one [`REDACTED`].
fn render(text: &str, mask: &[bool]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut hiding = false;
    for (i, c) in text.char_indices() {
        if mask[i] {
            if !hiding {
                out.push_str(REDACTED);
            }
            hiding = true;
        } else {
            hiding = false;
            out.push(c);
        }
    }
    out
}

/// Cuts `text` to [`MAX_MESSAGE_CHARS`] characters, marking any cut.
fn shorten(text: String, already_cut: bool) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None if already_cut => format!("{text}…"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_quoted_by_serde_is_redacted_and_the_rest_kept() {
        let settings = r#"{"keys": [], "orgs": {"acme": "Bearer SUPERSECRET-7f3a"}}"#;
        let message = r#"invalid settings: invalid type: string "Bearer SUPERSECRET-7f3a", expected struct Org at line 1 column 52"#;
        let redacted = plugin_message(message, settings);
        assert_eq!(
            redacted,
            r#"invalid settings: invalid type: string "<redacted>", expected struct Org at line 1 column 52"#
        );
    }

    #[test]
    fn words_of_a_value_are_redacted_wherever_they_appear() {
        let shadow = "root:$6$salt$hash0123:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::";
        let settings = serde_json::json!({ "list": shadow }).to_string();
        // Quoted whole, escapes and all, as `{:?}` writes it.
        let quoted = format!("invalid type: string {shadow:?}, expected a map");
        let redacted = plugin_message(&quoted, &settings);
        assert_eq!(redacted, r#"invalid type: string "<redacted>", expected a map"#);
        // Unquoted, or quoted in part.
        let loose = "bad entry root:$6$salt$hash0123:19000 and `daemon:*:19000`";
        let redacted = plugin_message(loose, &settings);
        assert!(!redacted.contains("hash0123") && !redacted.contains("daemon"), "{redacted}");
        assert!(redacted.starts_with("bad entry "), "{redacted}");
    }

    #[test]
    fn field_names_stay_but_keys_that_are_data_go() {
        let settings = r#"{"emial": ["a@b.c"], "alice@example.org": "x"}"#;
        let message = "unknown field `emial`, expected one of `emails`, `routes`";
        assert_eq!(plugin_message(message, settings), message);
        let message = "unknown field `alice@example.org`";
        assert_eq!(plugin_message(message, settings), "unknown field `<redacted>`");
    }

    #[test]
    fn an_entry_of_a_multi_line_value_is_redacted() {
        let settings = r##"{"list": "# team\nalice@example.org\nnot an address@\n"}"##;
        let message = r#""not an address@" is not an e-mail address"#;
        assert_eq!(plugin_message(message, settings), r#""<redacted>" is not an e-mail address"#);
    }

    #[test]
    fn parse_errors_keep_positions_and_punctuation_but_no_quoted_text() {
        assert_eq!(parse_error("expected `,` or `}` at line 1 column 10"), "expected `,` or `}` at line 1 column 10");
        assert_eq!(
            parse_error(r#"duplicate entry with key "Bearer x" at line 2 column 1"#),
            r#"duplicate entry with key "<redacted>" at line 2 column 1"#
        );
        assert_eq!(parse_error(r#"unterminated "secret text"#), r#"unterminated "<redacted>"#);
    }

    #[test]
    fn a_value_next_to_punctuation_is_redacted() {
        let settings = r#"{"token": "abc123XYZ"}"#;
        for (message, want) in [
            ("refused token abc123XYZ.", "refused token <redacted>."),
            ("abc123XYZ!", "<redacted>!"),
            ("is abc123XYZ? no", "is <redacted>? no"),
            ("GET /v1/abc123XYZ/x failed", "GET /v1/<redacted>/x failed"),
            ("header Bearer:abc123XYZ...", "header Bearer:<redacted>..."),
            ("joined Bearerabc123XYZ9", "joined Bearer<redacted>9"),
        ] {
            assert_eq!(plugin_message(message, settings), want, "{message}");
        }
    }

    #[test]
    fn pieces_of_a_value_with_punctuation_are_redacted() {
        let settings = r#"{"backend": "https://api.example.test/v1?key=s3cr3tK3y.&user=ops"}"#;
        let message = "the key s3cr3tK3y was refused by api.example.test!";
        let redacted = plugin_message(message, settings);
        assert!(!redacted.contains("s3cr3tK3y") && !redacted.contains("example"), "{redacted}");
        assert!(redacted.starts_with("the key <redacted> was refused by "), "{redacted}");
        // The whole value goes as one.
        let whole = "bad backend https://api.example.test/v1?key=s3cr3tK3y.&user=ops.";
        assert_eq!(plugin_message(whole, settings), "bad backend <redacted>.");
    }

    #[test]
    fn a_short_value_is_redacted_inside_quotes_only() {
        let settings = r#"{"pin": "7Q", "emails": ["x"]}"#;
        for (message, want) in [
            (r#"bad pin "7Q""#, r#"bad pin "<redacted>""#),
            (r#"bad pin "7Q!""#, r#"bad pin "<redacted>""#),
            ("bad pin `pin=7Q`", "bad pin `<redacted>`"),
            ("bad pin '7Q', it's short", "bad pin '<redacted>', it's short"),
            ("entry 'x' of the plugin's list", "entry '<redacted>' of the plugin's list"),
            // Not a value standing apart: kept.
            ("field `expected`, expected one of `emails`", "field `expected`, expected one of `emails`"),
            ("\"7Q7\" and 7Q outside quotes", "\"7Q7\" and 7Q outside quotes"),
        ] {
            assert_eq!(plugin_message(message, settings), want, "{message}");
        }
    }

    #[test]
    fn past_the_time_bound_every_word_goes() {
        let text = "the token abc123XYZ. at `line` 1 \"ab\"";
        let mut mask = vec![false; text.len()];
        mark_words(text, &mut mask);
        assert_eq!(render(text, &mask), "the <redacted> <redacted> at `<redacted>` 1 \"<redacted>\"");
    }

    #[test]
    fn long_messages_are_cut_without_keeping_half_a_secret() {
        let secret = "S3CRET".repeat(20_000);
        let settings = serde_json::json!({ "token": secret }).to_string();
        let message = format!("bad token {secret} here");
        let redacted = plugin_message(&message, &settings);
        assert!(!redacted.contains("S3CRET"), "{}", &redacted[..100]);
        assert!(redacted.chars().count() <= MAX_MESSAGE_CHARS + 1);
        let long = "word ".repeat(1000);
        let cut = plugin_message(&long, "{}");
        assert!(cut.ends_with('…') && cut.chars().count() == MAX_MESSAGE_CHARS + 1, "{cut}");
    }
}
