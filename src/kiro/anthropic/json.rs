//! Small JSON writing helpers: the converters write their output directly into byte buffers.

/// Writes `s` as a JSON string (quoted, escaped).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Fast path: nothing to escape.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
}

/// Writes an unsigned number.
pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    let digits = itoa_buf(n);
    out.extend_from_slice(digits.as_slice());
}

struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start: i }
}

/// Output-token estimate of a text: ASCII characters count a quarter token each, other
/// characters (CJK and the like) about two thirds (1.5 characters per token).
pub(crate) fn token_units(s: &str) -> u64 {
    // Units of 1/12 token: ASCII 3, other characters 8.
    let mut units = 0u64;
    for &b in s.as_bytes() {
        if b < 0x80 {
            units += 3;
        } else if b >= 0xC0 {
            units += 8;
        }
    }
    units
}

/// Units of [`token_units`] to tokens, rounded up.
pub(crate) fn units_to_tokens(units: u64) -> u64 {
    units.div_ceil(12)
}

/// 64-bit FNV-1a: stable across Rust versions and platforms (unlike `DefaultHasher`).
pub(crate) fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The FNV-1a offset basis.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
