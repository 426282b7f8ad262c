//! Groups (issue 29): the rules that need no storage — what a group name may be, what an
//! invite code looks like, and the limits.
//!
//! Pure: no storage, no network. The store keeps groups (`store::groups`), the chat and
//! `/groups` call it.

use std::time::Duration;

/// Characters of a group name, at most (Unicode scalar values, after folding).
pub const MAX_NAME_CHARS: usize = 32;

/// The limits a group and a member live within (`[groups]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Members a group may have.
    pub max_members: u32,
    /// Groups a member may be in.
    pub max_groups_per_member: u32,
    /// How long an invite code works after it is made or renewed.
    pub invite_ttl: Duration,
    /// Wrong invite codes a member may type within `join_window`; more are refused
    /// without looking the code up.
    pub join_failures: u32,
    pub join_window: Duration,
    /// The names of the WeCom-backed groups (`[[groups.wecom]]`, normalised): no chat group
    /// may take one, or a member in both would have two groups answering to one name.
    pub wecom_names: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_members: 1000,
            max_groups_per_member: 50,
            invite_ttl: Duration::from_secs(7 * 86_400),
            join_failures: 10,
            join_window: Duration::from_secs(3600),
            wecom_names: Vec::new(),
        }
    }
}

/// Why a group name is refused; the message says what a name may be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a group name is 1 to 32 characters; this one is empty")]
    Empty,
    #[error("a group name is 1 to 32 characters; this one has {0}")]
    TooLong(usize),
    #[error(
        "a group name is one word of visible characters: no spaces, no control characters, \
         no / or \\"
    )]
    NotVisible,
}

/// A group's name as it is kept and compared: folded as the chat folds commands
/// (full-width forms, invisible characters, trailing sentence punctuation), in lower case
/// (`Ops` and `ops` are one name: phones capitalise on their own), one word of 1–32
/// visible characters. No spaces inside, so that `group kick ops bob` reads one way only;
/// no `/` or `\`, so that the name is one segment of `/groups/{name}`.
pub fn normalize_name(typed: &str) -> Result<String, NameError> {
    let name = crate::bot::fold(typed).to_lowercase();
    let chars = name.chars().count();
    if chars == 0 {
        return Err(NameError::Empty);
    }
    if chars > MAX_NAME_CHARS {
        return Err(NameError::TooLong(chars));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\') || invisible(c))
    {
        return Err(NameError::NotVisible);
    }
    Ok(name)
}

/// Characters that show as nothing, beyond those the chat's fold drops: format characters
/// (soft hyphen, bidirectional marks and overrides, interlinear annotations) and the
/// Hangul fillers.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
    ) || ('\u{E000}'..='\u{F8FF}').contains(&c)
}

/// The invite alphabet: Crockford's base 32 (digits and capitals without I, L, O, U), so
/// that nothing in a code can be read two ways; [`parse_invite`] reads I and L as 1, O as 0.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of an invite code: 8 × 5 = 40 bits.
pub const INVITE_CHARS: usize = 8;

/// A new invite code, canonical (8 characters of [`ALPHABET`], no dash), from the thread's
/// CSPRNG. 2^40 codes: with the per-member limit on wrong codes, guessing one is hopeless.
pub fn generate_invite() -> String {
    (0..INVITE_CHARS)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

/// A canonical code as it is shown: `K7QM-3XPA`.
pub fn show_invite(code: &str) -> String {
    if code.len() == INVITE_CHARS && code.is_ascii() {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_owned()
    }
}

/// A code as typed (with or without the dash or spaces, any case, full-width, I/L for 1,
/// O for 0) in canonical form; `None` if it cannot be one.
pub fn parse_invite(typed: &str) -> Option<String> {
    let folded = crate::bot::fold(typed);
    let mut code = String::with_capacity(INVITE_CHARS);
    for c in folded.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' | '_' => continue,
            'I' | 'L' => '1',
            'O' => '0',
            c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
            _ => return None,
        };
        code.push(c);
    }
    (code.len() == INVITE_CHARS).then_some(code)
}

/// Why a group command or request is refused: what the member can do about it. The HTTP
/// API answers [`Refusal::message`] with [`Refusal::kind`]'s status; the chat answers the
/// bilingual text of `crate::bot::group_refused_reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadName(NameError),
    /// Not the shape of an invite code.
    BadInvite,
    /// No group has this code.
    WrongInvite,
    InviteExpired,
    /// Too many wrong codes within the window.
    TooManyTries(Duration),
    /// The member is in a group of this name already.
    NameTaken(String),
    /// The name of a WeCom-backed group (`[[groups.wecom]]`).
    Reserved(String),
    /// The member is in this many groups, the most they may be in.
    TooManyGroups(u32),
    /// The group has this many members, the most it may have.
    Full(String, u32),
    AlreadyMember(String),
    NoSuchGroup(String),
    NotOwner(String),
    FromWecom(String),
    KickSelf(String),
    /// (group, member): the member is not in the group.
    NotMember(String, String),
}

/// What kind of refusal: the HTTP status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    BadRequest,
    Forbidden,
    NotFound,
    Gone,
    Conflict,
    TooMany,
}

impl Refusal {
    pub fn kind(&self) -> RefusalKind {
        match self {
            Self::BadName(_) | Self::BadInvite | Self::KickSelf(_) => RefusalKind::BadRequest,
            Self::NotOwner(_) => RefusalKind::Forbidden,
            Self::WrongInvite | Self::NoSuchGroup(_) | Self::NotMember(..) => RefusalKind::NotFound,
            Self::InviteExpired => RefusalKind::Gone,
            Self::TooManyTries(_) => RefusalKind::TooMany,
            Self::NameTaken(_)
            | Self::Reserved(_)
            | Self::TooManyGroups(_)
            | Self::Full(..)
            | Self::AlreadyMember(_)
            | Self::FromWecom(_) => RefusalKind::Conflict,
        }
    }

    /// In English, saying what to do.
    pub fn message(&self) -> String {
        match self {
            Self::BadName(e) => e.to_string(),
            Self::BadInvite => "an invite code is 8 letters and digits, like K7QM-3XPA: ask the \
                 group's owner for it"
                .to_owned(),
            Self::WrongInvite => {
                "no group has this invite code: check it with the group's owner".to_owned()
            }
            Self::InviteExpired => "this invite code has expired: ask the group's owner for a \
                 new one (group invite NAME in the chat, or POST /groups/NAME/invite)"
                .to_owned(),
            Self::TooManyTries(window) => format!(
                "too many wrong invite codes: try again within {} (groups.join_failures)",
                show_duration(*window)
            ),
            Self::NameTaken(name) => format!(
                "you are in a group named \"{name}\" already; a member's groups have different \
                 names: choose another name, or leave that group first"
            ),
            Self::Reserved(name) => format!(
                "\"{name}\" is the name of a group backed by WeCom ([[groups.wecom]] in the \
                 config): choose another name"
            ),
            Self::TooManyGroups(max) => format!(
                "you are in {max} groups, the most a member may be in \
                 (groups.max_groups_per_member): leave one first"
            ),
            Self::Full(name, max) => format!(
                "group \"{name}\" has {max} members, the most a group may have \
                 (groups.max_members)"
            ),
            Self::AlreadyMember(name) => format!("you are in group \"{name}\" already"),
            Self::NoSuchGroup(name) => format!(
                "you are in no group named \"{name}\": GET /groups (or groups in the chat) \
                 lists yours"
            ),
            Self::NotOwner(name) => format!(
                "only the owner of group \"{name}\" can do this; GET /groups shows who owns \
                 which (\"owner\":true)"
            ),
            Self::FromWecom(name) => format!(
                "group \"{name}\" is backed by WeCom: its members come from WeCom departments \
                 and tags (groups.wecom in the config), not from invites; mute it instead"
            ),
            Self::KickSelf(name) => format!(
                "you cannot remove yourself from \"{name}\": leave it instead (POST \
                 /groups/{name}/leave)"
            ),
            Self::NotMember(name, member) => {
                format!("\"{member}\" is not in group \"{name}\"")
            }
        }
    }
}

/// `7d`, `1h`, `90s`: a span as the configuration writes it.
pub fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_folded_and_lower_case() {
        assert_eq!(normalize_name("ops").unwrap(), "ops");
        assert_eq!(normalize_name(" ＯＰＳ。").unwrap(), "ops");
        assert_eq!(normalize_name("运维").unwrap(), "运维");
        assert_eq!(normalize_name("on-call_2").unwrap(), "on-call_2");
        assert_eq!(normalize_name(&"群".repeat(32)).unwrap(), "群".repeat(32));
    }

    #[test]
    fn bad_names_say_why() {
        assert_eq!(normalize_name(""), Err(NameError::Empty));
        assert_eq!(normalize_name(" \u{200B} "), Err(NameError::Empty));
        assert_eq!(normalize_name(&"a".repeat(33)), Err(NameError::TooLong(33)));
        for bad in [
            "two words",
            "a/b",
            "a\\b",
            "a\u{202E}b",
            "tab\there",
            "a\u{00AD}b",
        ] {
            assert_eq!(normalize_name(bad), Err(NameError::NotVisible), "{bad:?}");
        }
        assert!(NameError::TooLong(40).to_string().contains("32"));
    }

    #[test]
    fn invites_are_eight_unambiguous_characters() {
        let codes: std::collections::HashSet<String> =
            (0..1000).map(|_| generate_invite()).collect();
        assert!(codes.len() > 990);
        for code in &codes {
            assert_eq!(code.len(), INVITE_CHARS);
            assert!(!code.contains(['I', 'L', 'O', 'U']), "{code}");
            assert_eq!(parse_invite(code).as_deref(), Some(code.as_str()));
            assert_eq!(
                parse_invite(&show_invite(code)).as_deref(),
                Some(code.as_str())
            );
        }
    }

    #[test]
    fn invites_are_read_as_typed_on_a_phone() {
        assert_eq!(show_invite("K7QM3XPA"), "K7QM-3XPA");
        for typed in [
            "K7QM-3XPA",
            "k7qm3xpa",
            "k7qm 3xpa",
            "Ｋ７ＱＭ－３ＸＰＡ",
            "K7QM-3XPA。",
        ] {
            assert_eq!(
                parse_invite(typed).as_deref(),
                Some("K7QM3XPA"),
                "{typed:?}"
            );
        }
        assert_eq!(parse_invite("10il-oooo").as_deref(), Some("10110000"));
        for bad in [
            "",
            "K7QM-3XP",
            "K7QM-3XPAA",
            "K7QM-3XPU",
            "运维运维运维运维",
            "ops",
        ] {
            assert_eq!(parse_invite(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// Whatever is typed, a name that is accepted is accepted again unchanged (it is
        /// what the store keeps and compares), and is 1–32 characters of one word.
        #[test]
        fn accepted_names_are_stable(typed in "\\PC{0,40}") {
            if let Ok(name) = normalize_name(&typed) {
                prop_assert_eq!(normalize_name(&name), Ok(name.clone()));
                let chars = name.chars().count();
                prop_assert!((1..=MAX_NAME_CHARS).contains(&chars));
                prop_assert!(!name.chars().any(char::is_whitespace));
            }
        }

        /// Whatever is typed as a code, reading it never panics, and what it reads is
        /// always a canonical code (8 characters of the alphabet).
        #[test]
        fn any_typed_code_reads_as_a_canonical_code_or_nothing(typed in "\\PC{0,24}") {
            if let Some(code) = parse_invite(&typed) {
                prop_assert_eq!(code.chars().count(), 8);
                prop_assert!(code.chars().all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)));
            }
        }

        /// Any code, shown and typed back in any case, is the same code.
        #[test]
        fn shown_codes_read_back(code in "[0-9A-HJKMNP-TV-Z]{8}", lower in any::<bool>()) {
            let shown = show_invite(&code);
            let typed = if lower { shown.to_lowercase() } else { shown };
            prop_assert_eq!(parse_invite(&typed), Some(code));
        }
    }
}
