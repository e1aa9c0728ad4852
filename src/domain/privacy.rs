//! What personal data may look like where people read it (logs): phone
//! numbers are masked the way the reference masks them in its examples,
//! `1390501****`.

/// Masks the last four digits of a phone number (all of a shorter one).
pub fn mask_number(number: &str) -> String {
    let digits = number.bytes().filter(u8::is_ascii_digit).count();
    let mut hide = digits.min(4);
    let mut masked: Vec<char> = number.chars().collect();
    for c in masked.iter_mut().rev() {
        if hide == 0 {
            break;
        }
        if c.is_ascii_digit() {
            *c = '*';
            hide -= 1;
        }
    }
    masked.into_iter().collect()
}

/// A participant as a log may show it: extensions as they are (they are
/// not personal), anything else masked.
pub fn mask_participant(entry: &str) -> String {
    if super::ids::Extension::recognize(entry).is_some() && entry.len() <= 4 {
        entry.to_owned()
    } else {
        mask_number(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lose_their_last_four_digits() {
        assert_eq!(mask_number("13905011234"), "1390501****");
        assert_eq!(mask_number("+8613905011234"), "+861390501****");
        assert_eq!(mask_number("123"), "***");
        assert_eq!(mask_participant("8002"), "8002");
        assert_eq!(mask_participant("13900001234"), "1390000****");
    }
}
