//! Opaque sync and page tokens. They are self-contained strings (hex of a
//! small payload plus a checksum), so a client may store them and send them
//! back later, even after restarting.

/// Salt mixed into the checksum so that hand-made tokens are rejected.
const SALT: &str = "synchro-calsim-v1";

/// What a token designates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// A `nextSyncToken`: changes after `watermark` (a store sequence number).
    Sync {
        /// Hash of the calendar id.
        cal: u64,
        /// Changes with a sequence number above this one are reported.
        watermark: u64,
        /// Issue serial, to expire or invalidate the tokens issued so far.
        serial: u64,
    },
    /// A `nextPageToken` of a full listing.
    FullPage {
        /// Hash of the calendar id.
        cal: u64,
        /// Hash of the query parameters it is bound to.
        params: u64,
        /// Store sequence number when the listing started.
        snapshot: u64,
        /// Ordinal of the last event served (0: none yet).
        after: u64,
        /// Page number, so consecutive tokens differ.
        n: u64,
    },
    /// A `nextPageToken` of an incremental listing.
    ChangesPage {
        /// Hash of the calendar id.
        cal: u64,
        /// Hash of the query parameters (the `syncToken` included).
        params: u64,
        /// Changes up to this sequence number belong to this listing.
        upper: u64,
        /// Sequence number of the last change served.
        after: u64,
        /// Page number, so consecutive tokens differ.
        n: u64,
    },
}

/// 64-bit FNV-1a of `text`.
pub fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn checksum(payload: &str) -> u32 {
    (fnv(&format!("{SALT}{payload}")) & 0xffff_ffff) as u32
}

impl Token {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        let payload = match *self {
            Token::Sync {
                cal,
                watermark,
                serial,
            } => format!("s.{cal:x}.{watermark}.{serial}"),
            Token::FullPage {
                cal,
                params,
                snapshot,
                after,
                n,
            } => format!("f.{cal:x}.{params:x}.{snapshot}.{after}.{n}"),
            Token::ChangesPage {
                cal,
                params,
                upper,
                after,
                n,
            } => format!("i.{cal:x}.{params:x}.{upper}.{after}.{n}"),
        };
        let hex: String = payload.bytes().map(|b| format!("{b:02x}")).collect();
        format!("C{hex}{:08x}", checksum(&payload))
    }

    /// Reads a token back; `None` when it was not made by [`Token::encode`].
    pub fn decode(text: &str) -> Option<Token> {
        let body = text.strip_prefix('C')?;
        if !body.is_ascii() || body.len() < 8 || !body.len().is_multiple_of(2) {
            return None;
        }
        let (hex, check) = body.split_at(body.len() - 8);
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let payload = String::from_utf8(bytes).ok()?;
        if u32::from_str_radix(check, 16).ok()? != checksum(&payload) {
            return None;
        }
        let parts: Vec<&str> = payload.split('.').collect();
        let hex64 = |s: &str| u64::from_str_radix(s, 16).ok();
        let dec = |s: &str| s.parse::<u64>().ok();
        match parts.as_slice() {
            ["s", cal, watermark, serial] => Some(Token::Sync {
                cal: hex64(cal)?,
                watermark: dec(watermark)?,
                serial: dec(serial)?,
            }),
            ["f", cal, params, snapshot, after, n] => Some(Token::FullPage {
                cal: hex64(cal)?,
                params: hex64(params)?,
                snapshot: dec(snapshot)?,
                after: dec(after)?,
                n: dec(n)?,
            }),
            ["i", cal, params, upper, after, n] => Some(Token::ChangesPage {
                cal: hex64(cal)?,
                params: hex64(params)?,
                upper: dec(upper)?,
                after: dec(after)?,
                n: dec(n)?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let tokens = [
            Token::Sync {
                cal: fnv("primary"),
                watermark: 42,
                serial: 3,
            },
            Token::FullPage {
                cal: 1,
                params: 2,
                snapshot: 3,
                after: 4,
                n: 5,
            },
            Token::ChangesPage {
                cal: 6,
                params: 7,
                upper: 8,
                after: 9,
                n: 10,
            },
        ];
        for t in tokens {
            let text = t.encode();
            assert_eq!(Token::decode(&text), Some(t));
            assert_eq!(Token::decode(&format!("1{text}")), None);
            let mut tampered = text.clone();
            tampered.replace_range(3..4, if &text[3..4] == "0" { "1" } else { "0" });
            assert_eq!(Token::decode(&tampered), None);
        }
        assert_eq!(Token::decode("CPDAlvWDx70CEPDAlvWDx70CGAU="), None);
        assert_eq!(Token::decode(""), None);
    }
}
