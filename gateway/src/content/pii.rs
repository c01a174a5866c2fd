//! PII and secret detection: every detector is one pattern of a single multi-pattern regex
//! (`regex_automata::meta::Regex::new_many`), so a text is scanned once, left to right, whatever
//! the number of detectors. A candidate is then checked by its detector's validator (Luhn for
//! cards, mod-97 for IBANs, the SSA's rules for SSNs, octet ranges, a real IPv6 parse, digit
//! counts for phones, entropy for unlabelled tokens).
//!
//! Patterns are listed most specific first: at one position the first pattern that matches
//! (and validates) wins, so a provider key is reported as a secret, not as a high-entropy token.
//! A number rejected by a stricter validator (not a card, IP, SSN or IBAN) is tried as a phone
//! number at the same place; otherwise the scan moves one character on.

use std::ops::Range;

use regex_automata::hybrid::dfa::{Cache as LiveCache, DFA};
use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input, MatchKind, PatternID};

/// What a detector validates beyond its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validator {
    None,
    Luhn,
    Iban,
    Ssn,
    Ipv4,
    Ipv6,
    Phone,
    /// Mixed case and digits, and at least 3.5 bits of entropy per character.
    Entropy,
}

impl Validator {
    pub fn parse(name: &str) -> Option<Validator> {
        Some(match name {
            "luhn" => Validator::Luhn,
            "iban" => Validator::Iban,
            "ssn" => Validator::Ssn,
            "ipv4" => Validator::Ipv4,
            "ipv6" => Validator::Ipv6,
            "phone" => Validator::Phone,
            "entropy" => Validator::Entropy,
            _ => return None,
        })
    }
}

/// One detector: the kind it reports, its pattern and its validator.
#[derive(Debug, Clone)]
pub struct Detector {
    pub kind: Box<str>,
    pub pattern: String,
    pub validator: Validator,
}

/// Built-in patterns are ASCII-only (`(?-u)`): a Unicode word boundary would keep the scan off
/// the fast DFA engines.
fn builtin(kind: &str, pattern: &str, validator: Validator) -> Detector {
    Detector {
        kind: kind.into(),
        pattern: format!("(?-u){pattern}"),
        validator,
    }
}

/// The shipped detectors, most specific first.
pub fn builtins() -> Vec<Detector> {
    vec![
        builtin(
            "secret",
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----",
            Validator::None,
        ),
        builtin(
            "secret",
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            Validator::None,
        ),
        builtin(
            "secret",
            concat!(
                r"\b(?:sk-ant-[A-Za-z0-9_-]{32,}",
                r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}",
                r"|(?:AKIA|ASIA)[0-9A-Z]{16}",
                r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,}",
                r"|AIza[0-9A-Za-z_-]{35}",
                r"|xox[abposr]-[A-Za-z0-9-]{10,}",
                r"|[sr]k_live_[0-9A-Za-z]{24,}",
                r"|lk_[0-9a-f]{12}_[0-9a-f]{64})",
            ),
            Validator::None,
        ),
        builtin(
            "email",
            r"[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b",
            Validator::None,
        ),
        builtin(
            "iban",
            r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b",
            Validator::Iban,
        ),
        builtin("card", r"\b[0-9](?:[ -]?[0-9]){12,18}\b", Validator::Luhn),
        builtin("ssn", r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", Validator::Ssn),
        builtin(
            "ipv6",
            // Eight groups, or a `::` with groups after it (the validator parses it): a time
            // such as 10:35:00 is never a candidate, which made prose with times 1.5x slower.
            concat!(
                r"(?i)(?:(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}",
                r"|(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})?::[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})\b",
            ),
            Validator::Ipv6,
        ),
        builtin("ipv4", r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b", Validator::Ipv4),
        builtin(
            "phone",
            // A `+` country code, a `(` area code, or three or more groups with separators:
            // a bare number (a year, a count, a version's part) is never a candidate.
            concat!(
                r"(?:\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,5}(?:[ .-]?[0-9]{1,5}){1,5}",
                r"|\([0-9]{1,4}\)[ .-]?[0-9]{2,5}(?:[ .-]?[0-9]{2,5}){1,4}",
                r"|\b[0-9]{2,5}(?:[ .-][0-9]{2,5}){2,5})\b",
            ),
            Validator::Phone,
        ),
        // `=` only as base64 padding: `KEY=value` is a name and a value, not one token.
        builtin("secret", r"\b[A-Za-z0-9_+/-]{32,}={0,2}", Validator::Entropy),
    ]
}

/// A match: which detector, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub detector: usize,
    pub span: Range<usize>,
}

/// The detectors, compiled into one automaton.
pub struct Scanner {
    re: Regex,
    /// The same patterns as a lazy DFA that reports every pattern (`MatchKind::All`): run
    /// anchored from a position, it says whether a match could start there and still be in
    /// progress at the end of the text seen so far (see [`Scanner::live_from`]).
    live: DFA,
    /// Warm liveness caches of finished streams, for the next ones.
    spare: std::sync::Mutex<Vec<LiveCache>>,
    detectors: Vec<Detector>,
}

/// Liveness caches kept warm between streams (each at most [`LIVE_CACHE`] bytes).
const SPARE_CACHES: usize = 8;
const LIVE_CACHE: usize = 1024 * 1024;

/// Scratch space for [`Scanner::live_from`]; one per stream.
pub struct Liveness(LiveCache);

impl Scanner {
    pub fn new(detectors: Vec<Detector>) -> Result<Scanner, String> {
        let patterns: Vec<&str> = detectors.iter().map(|d| d.pattern.as_str()).collect();
        // A larger lazy-DFA cache than the default keeps eleven overlapping patterns on the DFA.
        let re = Regex::builder()
            .configure(Regex::config().hybrid_cache_capacity(8 * 1024 * 1024))
            .build_many(&patterns)
            .map_err(|e| e.to_string())?;
        let live = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    // A custom pattern's Unicode `\b` makes the DFA give up on non-ASCII text,
                    // which `live_from` treats as "maybe": held back, never passed unscanned.
                    .unicode_word_boundary(true)
                    .cache_capacity(LIVE_CACHE),
            )
            .build_many(&patterns)
            .map_err(|e| e.to_string())?;
        Ok(Scanner {
            re,
            live,
            spare: std::sync::Mutex::new(Vec::new()),
            detectors,
        })
    }

    /// A liveness cache: a warm one a finished stream gave back, else a new one.
    pub fn liveness(&self) -> Liveness {
        let spare = self.spare.lock().ok().and_then(|mut s| s.pop());
        Liveness(spare.unwrap_or_else(|| self.live.create_cache()))
    }

    /// Keeps a stream's liveness cache for the next stream.
    pub fn recycle(&self, l: Liveness) {
        if let Ok(mut s) = self.spare.lock()
            && s.len() < SPARE_CACHES
        {
            s.push(l.0);
        }
    }

    /// Could a match that starts at `start` still be in progress at the end of `text`? `false`
    /// when every detector's pattern has failed (or finished) before the end, so no more text
    /// can change what is found from `start`. Undecidable cases answer `true`.
    pub fn live_from(&self, text: &str, start: usize, cache: &mut Liveness) -> bool {
        let cache = &mut cache.0;
        let input = Input::new(text).range(start..).anchored(Anchored::Yes);
        let Ok(mut sid) = self.live.start_state_forward(cache, &input) else {
            return true;
        };
        for &b in &text.as_bytes()[start..] {
            match self.live.next_state(cache, sid, b) {
                Ok(next) if next.is_dead() => return false,
                Ok(next) if next.is_quit() => return true,
                Ok(next) => sid = next,
                Err(_) => return true,
            }
        }
        true
    }

    /// Like [`Scanner::scan`], from `from` on (the text before it is context: word boundaries
    /// and the validators look at it).
    pub fn scan_from(&self, text: &str, from: usize, f: impl FnMut(Hit)) {
        self.scan_at(text, from, f);
    }

    pub fn detectors(&self) -> &[Detector] {
        &self.detectors
    }

    /// Calls `f` with every validated match in `text`, in order, not overlapping.
    pub fn scan(&self, text: &str, f: impl FnMut(Hit)) {
        self.scan_at(text, 0, f);
    }

    fn scan_at(&self, text: &str, from: usize, mut f: impl FnMut(Hit)) {
        let mut at = from;
        while at < text.len() {
            let Some(m) = self.re.search(&Input::new(text).range(at..)) else {
                return;
            };
            let start = m.start();
            if let Some(hit) = self.validated(text, m.pattern(), m.range()) {
                at = hit.span.end.max(start + 1);
                f(hit);
                continue;
            }
            // Rejected: a number that is not a valid card, IP, SSN or IBAN may still be a phone
            // number starting here (the only later shape that overlaps theirs).
            let mut found = None;
            let rejected = self.detectors[m.pattern().as_usize()].validator;
            let overlaps = matches!(
                rejected,
                Validator::Luhn | Validator::Ipv4 | Validator::Ipv6 | Validator::Ssn | Validator::Iban
            );
            for p in m.pattern().as_usize() + 1..self.detectors.len() {
                if !overlaps || self.detectors[p].validator != Validator::Phone {
                    continue;
                }
                let pid = PatternID::new_unchecked(p);
                let input = Input::new(text).range(start..).anchored(Anchored::Pattern(pid));
                if let Some(m2) = self.re.search(&input)
                    && let Some(hit) = self.validated(text, pid, m2.range())
                {
                    found = Some(hit);
                    break;
                }
            }
            match found {
                Some(hit) => {
                    at = hit.span.end.max(start + 1);
                    f(hit);
                }
                None => at = next_char(text, start),
            }
        }
    }

    fn validated(&self, text: &str, pattern: PatternID, span: Range<usize>) -> Option<Hit> {
        let d = self.detectors.get(pattern.as_usize())?;
        let s = &text[span.clone()];
        let span = match d.validator {
            Validator::None => span,
            Validator::Luhn => luhn(s).then_some(span)?,
            Validator::Iban => span.start..span.start + iban(s)?,
            Validator::Ssn => ssn(s).then_some(span)?,
            Validator::Ipv4 => ipv4(s).then_some(span)?,
            Validator::Ipv6 => ipv6(text, span.clone()).then_some(span)?,
            Validator::Phone => (phone(s) && phone_context(text, span.clone())).then_some(span)?,
            Validator::Entropy => entropy(s).then_some(span)?,
        };
        Some(Hit {
            detector: pattern.as_usize(),
            span,
        })
    }
}

fn next_char(text: &str, at: usize) -> usize {
    text[at..]
        .chars()
        .next()
        .map_or(text.len(), |c| at + c.len_utf8())
}

/// The Luhn check over the digits of `s` (separators ignored); 13 to 19 digits.
pub fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    // One kind of separator, if any: "4111 1111-1111 1111" is not how cards are written.
    let seps: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN lengths of the countries whose length is checked exactly (others: 15 to 34).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AT", 20),
    ("BE", 16),
    ("BG", 22),
    ("CH", 21),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("EE", 20),
    ("ES", 24),
    ("FI", 18),
    ("FR", 27),
    ("GB", 22),
    ("GR", 27),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IS", 26),
    ("IT", 27),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MT", 31),
    ("NL", 18),
    ("NO", 15),
    ("PL", 28),
    ("PT", 25),
    ("RO", 24),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
];

/// The length (in bytes of `s`) of the IBAN at the start of `s`, when its check digits are
/// valid (mod 97). A pattern match may run into a following word: for a country of known
/// length exactly that many characters are taken; otherwise whole groups are dropped from the
/// end until the rest checks.
pub fn iban(s: &str) -> Option<usize> {
    let known = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| s.starts_with(c))
        .map(|&(_, n)| n);
    let grouped = s.as_bytes().get(4) == Some(&b' ');
    // Candidate ends: after each character (contiguous) or each group (grouped).
    let mut ends: Vec<usize> = s
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (!grouped || s.as_bytes().get(i + 1).is_none_or(|&b| b == b' ')))
        .map(|(i, _)| i + 1)
        .collect();
    ends.reverse();
    for end in ends {
        let compact: Vec<u8> = s[..end].bytes().filter(|b| *b != b' ').collect();
        let fits = match known {
            Some(n) => compact.len() == n,
            None => (15..=34).contains(&compact.len()),
        };
        if fits && mod97(&compact) == Some(1) {
            return Some(end);
        }
        if compact.len() < 15 || known.is_some_and(|n| compact.len() < n) {
            return None;
        }
    }
    None
}

fn mod97(iban: &[u8]) -> Option<u32> {
    let (head, tail) = iban.split_at(4);
    let mut r: u32 = 0;
    for &b in tail.iter().chain(head) {
        match b {
            b'0'..=b'9' => r = (r * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => r = (r * 100 + u32::from(b - b'A' + 10)) % 97,
            _ => return None,
        }
    }
    Some(r)
}

/// A US SSN as issued: area not 000, 666 or 9xx; group not 00; serial not 0000.
pub fn ssn(s: &str) -> bool {
    let b = s.as_bytes();
    let area = &b[0..3];
    area != b"000" && area != b"666" && area[0] != b'9' && &b[4..6] != b"00" && &b[7..11] != b"0000"
}

/// A real IPv6 address (parsed), not a path like `std::net` (it must not start inside a word)
/// and with at least two groups, or the loopback `::1`.
fn ipv6(text: &str, span: Range<usize>) -> bool {
    let s = &text[span.clone()];
    let mid_word = text[..span.start]
        .bytes()
        .next_back()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    let groups = s.split(':').filter(|g| !g.is_empty()).count();
    !mid_word && (groups >= 2 || s == "::1") && s.parse::<std::net::Ipv6Addr>().is_ok()
}

fn ipv4(s: &str) -> bool {
    s.split('.')
        .all(|o| o.parse::<u16>().is_ok_and(|n| n <= 255) && (o.len() == 1 || !o.starts_with('0')))
}

/// 10 to 15 digits (E.164 allows 15). With a `+` country code any grouping goes; otherwise the
/// number needs a `(` area code or at least three groups, each of two digits or more (so an
/// ISBN or a bare number, an order number or a Unix time, is not one), and dots only in the
/// North American 3-3-4 form (so a version or an IP-like string is not one).
fn phone(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    if !(10..=15).contains(&digits) {
        return false;
    }
    if s.starts_with('+') {
        return true;
    }
    let groups: Vec<&str> = s
        .split([' ', '.', '-', '(', ')'])
        .filter(|g| !g.is_empty())
        .collect();
    if groups.iter().any(|g| g.len() < 2) {
        return false;
    }
    if s.contains('.') {
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        return lens == [3, 3, 4];
    }
    s.starts_with('(') || groups.len() >= 3
}

/// A phone number stands alone: it does not continue a longer run of digit groups (a tracking
/// number, a card, an IBAN's groups), is not a date, and is not followed by a time's `:`.
fn phone_context(text: &str, span: Range<usize>) -> bool {
    let s = &text[span.clone()];
    if text[span.end..].starts_with(':') {
        return false;
    }
    let groups: Vec<&str> = s.split([' ', '.', '-']).filter(|g| !g.is_empty()).collect();
    if groups.len() >= 3
        && groups[0].len() == 4
        && (groups[0].starts_with("19") || groups[0].starts_with("20"))
        && groups[1].len() == 2
        && groups[2].len() == 2
    {
        return false;
    }
    // The token before, across one separator.
    let before = &text[..span.start];
    let Some(sep) = before.chars().next_back() else {
        return true;
    };
    if !matches!(sep, ' ' | '-' | '.') {
        return true;
    }
    let prev = before[..before.len() - 1]
        .rsplit(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("");
    let digits = !prev.is_empty() && prev.bytes().all(|b| b.is_ascii_digit());
    // An IBAN's group: four upper-case letters or digits, such as `NWBK` or `M279`.
    let iban_group = prev.len() == 4 && prev.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    !(digits || iban_group)
}

/// An unlabelled token that looks generated: upper and lower case and digits, and at least 3.5
/// bits of entropy per character (hex digests and UUIDs have no upper case; words have less).
fn entropy(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > 256 {
        return false;
    }
    if !(b.iter().any(u8::is_ascii_uppercase)
        && b.iter().any(u8::is_ascii_lowercase)
        && b.iter().any(u8::is_ascii_digit))
    {
        return false;
    }
    let mut counts = [0u32; 256];
    for &c in b {
        counts[c as usize] += 1;
    }
    let n = b.len() as f64;
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    h >= 3.5
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(String, String)> {
        let s = Scanner::new(builtins()).unwrap();
        let mut out = Vec::new();
        s.scan(text, |h| {
            out.push((
                s.detectors()[h.detector].kind.to_string(),
                text[h.span].to_string(),
            ))
        });
        out
    }

    #[test]
    fn each_kind_is_found_and_validated() {
        let t = "mail ana.lopez@example.com, card 4111 1111 1111 1111, iban DE89 3704 0044 0532 0130 00 ok, \
                 ssn 123-45-6789, ip 192.168.1.20 and 2001:db8::1, call +44 20 7946 0958, \
                 key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD";
        let got = kinds(t);
        let want = [
            ("email", "ana.lopez@example.com"),
            ("card", "4111 1111 1111 1111"),
            ("iban", "DE89 3704 0044 0532 0130 00"),
            ("ssn", "123-45-6789"),
            ("ipv4", "192.168.1.20"),
            ("ipv6", "2001:db8::1"),
            ("phone", "+44 20 7946 0958"),
            ("secret", "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn near_misses_are_not_pii() {
        for t in [
            "order 4111 1111 1111 1112",
            "iban DE88 3704 0044 0532 0130 00",
            "ssn 000-45-6789 or 666-12-3456 or 923-45-6789",
            "version 1.2.300.4 and v1.2.3",
            "at 2026-11-28T10:35:00Z (1732790100)",
            "id 550e8400-e29b-41d4-a716-446655440000",
            "sha e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "time 10:35:00",
            "sk-test and AKIA1234",
        ] {
            assert_eq!(kinds(t), vec![], "{t}");
        }
    }

    #[test]
    fn phones_in_international_forms() {
        for p in [
            "+1 415 555 0132",
            "+44 20 7946 0958",
            "+49 30 123456789",
            "(415) 555-0132",
            "415-555-0132",
            "+81 3-1234-5678",
        ] {
            assert_eq!(
                kinds(&format!("call {p} now")),
                vec![("phone".into(), p.into())],
                "{p}"
            );
        }
    }
}
