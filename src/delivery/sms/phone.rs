//! Phone numbers as people type them, normalised to E.164.

use std::fmt;

/// A mobile number in E.164 (`+8613800138000`), normalised from what people type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    /// `+` and 8 to 15 digits.
    e164: String,
    /// Digits of the country calling code (1 to 3).
    country_len: usize,
}

/// Country calling codes of one and two digits (ITU-T E.164 assignments); every other
/// code has three. Calling codes are prefix-free, so the first match is the code.
const SHORT_COUNTRY_CODES: &[&str] = &[
    "1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45",
    "46", "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
    "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
];

impl PhoneNumber {
    /// Reads a number the way people write it: spaces, dashes, dots and parentheses are
    /// ignored, full-width digits folded; `13800138000`, `8613800138000`, `008613800138000`
    /// and `+86 138-0013-8000` are all `+8613800138000`; any other country needs its code
    /// (`+44…`, `0044…`), 8 to 15 digits in all.
    pub fn parse(input: &str) -> Result<PhoneNumber, PhoneError> {
        let refuse = || PhoneError {
            typed: input.trim().to_owned(),
        };
        let mut cleaned = String::with_capacity(input.len());
        for c in input.trim().chars() {
            match c {
                '0'..='9' | '+' => cleaned.push(c),
                // Full-width digits and plus sign (Chinese input methods).
                '０'..='９' => {
                    let digit = u32::from(c) - u32::from('０');
                    cleaned.push(char::from_digit(digit, 10).ok_or_else(refuse)?);
                }
                '＋' => cleaned.push('+'),
                c if c.is_whitespace() => {}
                '-' | '‐' | '‑' | '‒' | '–' | '—' | '－' | '.' | '(' | ')' | '（' | '）' =>
                    {}
                _ => return Err(refuse()),
            }
        }
        let digits = if let Some(rest) = cleaned.strip_prefix('+') {
            rest
        } else if let Some(rest) = cleaned.strip_prefix("00") {
            rest
        } else if cleaned.len() == 11 && cleaned.starts_with('1') {
            // A mainland mobile number without its country code.
            return Self::parse(&format!("+86{cleaned}"));
        } else if cleaned.len() == 13 && cleaned.starts_with("861") {
            &cleaned[..]
        } else {
            return Err(refuse());
        };
        if !(8..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(refuse());
        }
        // Mainland China: an 11-digit mobile number starting with 1 (SMS reaches nothing else).
        if let Some(national) = digits.strip_prefix("86")
            && !(national.len() == 11 && national.starts_with('1'))
        {
            return Err(refuse());
        }
        let country_len = SHORT_COUNTRY_CODES
            .iter()
            .find(|code| digits.starts_with(*code))
            .map_or(3, |code| code.len());
        Ok(PhoneNumber {
            e164: format!("+{digits}"),
            country_len,
        })
    }

    /// `+8613800138000`.
    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// The country calling code without `+`: `86`.
    pub fn country_code(&self) -> &str {
        self.e164.get(1..=self.country_len).unwrap_or_default()
    }

    /// The number within its country: `13800138000`.
    pub fn national(&self) -> &str {
        self.e164.get(1 + self.country_len..).unwrap_or_default()
    }

    /// For logs and lists: `+86 138****8000` (the country code, the first three and the
    /// last four digits; shorter numbers show two and two).
    pub fn masked(&self) -> String {
        let national = self.national();
        let (head, tail) = if national.len() >= 9 { (3, 4) } else { (2, 2) };
        format!(
            "+{} {}****{}",
            self.country_code(),
            national.get(..head).unwrap_or_default(),
            national
                .get(national.len().saturating_sub(tail)..)
                .unwrap_or_default(),
        )
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.e164)
    }
}

impl std::str::FromStr for PhoneNumber {
    type Err = PhoneError;
    fn from_str(s: &str) -> Result<Self, PhoneError> {
        Self::parse(s)
    }
}

/// Text that is not a mobile number [`PhoneNumber::parse`] reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{typed:?} is not a phone number: write it as 13800138000 or +8613800138000")]
pub struct PhoneError {
    /// As typed, trimmed.
    pub typed: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_people_type_becomes_e164() {
        for typed in [
            "13800138000",
            "138 0013 8000",
            "138-0013-8000",
            "8613800138000",
            "+8613800138000",
            "+86 138-0013-8000",
            "+86 (138) 0013 8000",
            "008613800138000",
            "0086 138 0013 8000",
            "１３８００１３８０００",
            "＋８６ １３８ ００１３ ８０００",
            "  13800138000\n",
            "138\u{3000}0013\u{3000}8000",
            "（+86）138.0013.8000",
        ] {
            let number = PhoneNumber::parse(typed).unwrap_or_else(|e| panic!("{typed}: {e}"));
            assert_eq!(number.as_str(), "+8613800138000", "{typed}");
            assert_eq!(number.country_code(), "86");
            assert_eq!(number.national(), "13800138000");
        }
        for (typed, e164, cc) in [
            ("+1 (415) 555-2671", "+14155552671", "1"),
            ("+44 7911 123456", "+447911123456", "44"),
            ("0044 7911 123456", "+447911123456", "44"),
            ("+852 5123 4567", "+85251234567", "852"),
            ("+7 912 345-67-89", "+79123456789", "7"),
            ("+6012345678", "+6012345678", "60"),
            ("+123456789012345", "+123456789012345", "1"),
        ] {
            let number = PhoneNumber::parse(typed).unwrap();
            assert_eq!(number.as_str(), e164, "{typed}");
            assert_eq!(number.country_code(), cc, "{typed}");
            assert_eq!(
                format!("+{}{}", number.country_code(), number.national()),
                e164
            );
            assert_eq!(number.to_string(), e164);
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_sentence() {
        for typed in [
            "",
            "+",
            "abc",
            "1380013800",        // 10 digits
            "138001380001",      // 12 digits
            "23800138000",       // 11 digits, not a mobile
            "+86 1380013800",    // short mainland number
            "+86 010 12345678",  // landline
            "+1234567",          // 7 digits
            "+1234567890123456", // 16 digits
            "+0123456789",
            "7911 123456",
            "13800138000 ext 1",
            "+86 138 0013 8000 ✓",
            "++8613800138000",
            "+86+13800138000",
            "0013800138000x",
        ] {
            let err = PhoneNumber::parse(typed).unwrap_err().to_string();
            assert!(
                err.ends_with("is not a phone number: write it as 13800138000 or +8613800138000"),
                "{typed}: {err}"
            );
        }
    }

    #[test]
    fn masked_keeps_the_country_and_the_ends() {
        let masked = |typed: &str| PhoneNumber::parse(typed).unwrap().masked();
        assert_eq!(masked("13800138000"), "+86 138****8000");
        assert_eq!(masked("+447911123456"), "+44 791****3456");
        assert_eq!(masked("+14155552671"), "+1 415****2671");
        assert_eq!(masked("+85251234567"), "+852 51****67");
        assert!(!masked("+8613812345678").contains("1234"));
    }
}
