//! Small encoders: base64 for GraphQL ids (`Dossier-42` → `RG9zc2llci00Mg==`)
//! and hex for opaque keyset cursors.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as the platform's GraphQL ids use.
pub fn base64(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The GraphQL id of an object: base64 of `Type-id`.
pub fn graphql_id(kind: &str, id: i64) -> String {
    base64(&format!("{kind}-{id}"))
}

/// A keyset position in one ordering of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Which ordering the position belongs to (one letter).
    pub tag: char,
    /// The sort key, in µs.
    pub key: i64,
    /// The dossier number breaking ties.
    pub number: i64,
}

impl Cursor {
    /// Opaque text form: hex of `tag:key:number`.
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.tag, self.key, self.number)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Reads a cursor back; `None` when it was not made by [`Cursor::encode`].
    pub fn decode(text: &str) -> Option<Cursor> {
        if !text.len().is_multiple_of(2) || !text.is_ascii() {
            return None;
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let plain = String::from_utf8(bytes).ok()?;
        let mut parts = plain.split(':');
        let tag = parts.next()?;
        let key = parts.next()?.parse().ok()?;
        let number = parts.next()?.parse().ok()?;
        if parts.next().is_some() || tag.chars().count() != 1 {
            return None;
        }
        Some(Cursor {
            tag: tag.chars().next()?,
            key,
            number,
        })
    }
}
