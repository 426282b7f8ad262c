//! Whether text shows anything: the one rule every route that creates messages uses to
//! tell a message from "nothing to send".
//!
//! A title or content made only of zero-width spaces, direction marks, a BOM or the Hangul
//! filler is not empty and not whitespace, yet arrives as a message that shows nothing. So a
//! character counts as visible unless it is one of:
//!
//! - whitespace (the Unicode `White_Space` property, [`char::is_whitespace`]);
//! - a control character (general category Cc): not text, nothing to see;
//! - a format character (general category Cf, from the `unicode-properties` tables): ZWSP
//!   U+200B, ZWNJ/ZWJ, LRM/RLM U+200E/F, the bidi embeddings and isolates U+202A–E and
//!   U+2066–9, WORD JOINER U+2060 and the invisible operators U+2061–4, the Mongolian
//!   vowel separator U+180E, the BOM U+FEFF, the soft hyphen U+00AD, tag characters…;
//! - a filler or other character that is drawn as nothing although it is not Cf: the Hangul
//!   fillers U+115F, U+1160, U+3164 and U+FFA0, the combining grapheme joiner U+034F, the
//!   Khmer inherent vowels U+17B4/U+17B5, the Mongolian free variation selectors
//!   U+180B–U+180D and U+180F, the variation selectors U+FE00–U+FE0F and U+E0100–U+E01EF
//!   (all `Default_Ignorable_Code_Point` in Unicode's DerivedCoreProperties.txt), and the
//!   blank Braille pattern U+2800, which is not ignorable but is drawn as an empty cell and
//!   is the usual way to fake a blank message.
//!
//! Text that has one visible character anywhere is kept as it was sent, invisible
//! characters included: this decides, it never rewrites.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// True when `c` is drawn as nothing (see the module documentation).
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c.general_category(),
            GeneralCategory::Format | GeneralCategory::Control
        )
        || matches!(
            c,
            '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

/// True when `text` has at least one visible character.
pub fn has_visible(text: &str) -> bool {
    !text.chars().all(is_invisible)
}

/// `text` if it shows anything, else `None`: the test for an optional title or content.
pub fn visible(text: Option<String>) -> Option<String> {
    text.filter(|t| has_visible(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every blank form the fuzzing found, and the rest of the list, alone and mixed.
    const BLANK: &[&str] = &[
        "",
        " \t\r\n",
        "\u{200B}",                                 // ZERO WIDTH SPACE
        "\u{200C}\u{200D}",                         // ZWNJ, ZWJ
        "\u{200E}\u{200F}",                         // LRM, RLM
        "\u{202A}\u{202B}\u{202C}\u{202D}\u{202E}", // bidi embeddings and overrides
        "\u{2066}\u{2067}\u{2068}\u{2069}",         // bidi isolates
        "\u{061C}",                                 // ARABIC LETTER MARK
        "\u{FEFF}",                                 // BOM
        "\u{2060}\u{2061}\u{2062}\u{2063}\u{2064}", // WORD JOINER, invisible operators
        "\u{180E}",                                 // MONGOLIAN VOWEL SEPARATOR
        "\u{00AD}",                                 // SOFT HYPHEN
        "\u{3164}",                                 // HANGUL FILLER
        "\u{115F}\u{1160}",                         // HANGUL CHOSEONG/JUNGSEONG FILLER
        "\u{FFA0}",                                 // HALFWIDTH HANGUL FILLER
        "\u{2800}",                                 // BRAILLE PATTERN BLANK
        "\u{034F}",                                 // COMBINING GRAPHEME JOINER
        "\u{FE0F}\u{E0100}",                        // variation selectors
        "\u{E0001}\u{E0041}\u{E007F}",              // tag characters
        "\u{00A0}\u{2003}\u{3000}\u{2028}\u{0085}", // no-break, em, ideographic spaces; LS; NEL
        "\u{0001}\u{007F}\u{009F}",                 // controls
        " \u{200B}\u{FEFF}\u{3164}\u{200F} \u{2800}\n",
    ];

    #[test]
    fn blank_forms_show_nothing() {
        for text in BLANK {
            assert!(!has_visible(text), "{text:?}");
            assert_eq!(visible(Some((*text).to_owned())), None, "{text:?}");
        }
        assert_eq!(visible(None), None);
    }

    #[test]
    fn one_visible_character_is_enough_and_the_text_is_kept_as_sent() {
        for text in [
            "a",
            "\u{200B}hi\u{200B}",
            "\u{FEFF}推送",
            "\u{3164}\u{3164}.",
            "❤\u{FE0F}",
            "👩\u{200D}💻",
            "\u{202E}olleh",
            "e\u{301}",
            "\u{2801}",         // a Braille pattern with a dot
            "\u{1100}\u{1161}", // 가 from conjoining jamo
            "\u{0600}1",        // an Arabic number sign (Cf) with its number
        ] {
            assert!(has_visible(text), "{text:?}");
            assert_eq!(visible(Some(text.to_owned())).as_deref(), Some(text));
        }
    }
}
