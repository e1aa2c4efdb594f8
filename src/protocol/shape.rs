//! A CBOR walker that counts data items and depth without building values:
//! a frame of a million tiny items costs a scan, not a million allocations.

use super::MAX_DEPTH;

struct Scan<'a> {
    frame: &'a [u8],
    pos: usize,
    items: usize,
    max_items: usize,
}

const BREAK: u8 = 0xff;

pub enum Refused {
    TooManyItems,
    Malformed(String),
}

pub fn check(frame: &[u8], max_items: usize) -> Result<(), Refused> {
    let mut scan = Scan {
        frame,
        pos: 0,
        items: 0,
        max_items,
    };
    match scan.item(0) {
        Ok(()) => Ok(()),
        Err(_) if scan.items > max_items => Err(Refused::TooManyItems),
        Err(why) => Err(Refused::Malformed(why)),
    }
}

/// The top-level `id`, if the frame is a definite-length map that has a
/// valid one; walks every item but builds nothing.
pub fn peek_id(frame: &[u8]) -> Option<u64> {
    let mut scan = Scan {
        frame,
        pos: 0,
        items: 0,
        max_items: usize::MAX,
    };
    let (5, Some(n)) = scan.head().ok()? else {
        return None;
    };
    for _ in 0..n {
        let key_start = scan.pos;
        scan.item(1).ok()?;
        let is_id = &frame[key_start..scan.pos] == b"\x62id";
        let value_start = scan.pos;
        scan.item(1).ok()?;
        if is_id {
            let mut value = Scan {
                frame: &frame[value_start..scan.pos],
                pos: 0,
                items: 0,
                max_items: 1,
            };
            return match value.head().ok()? {
                (0, Some(id)) if id < super::MAX_REQUEST_ID => Some(id),
                _ => None,
            };
        }
    }
    None
}

impl Scan<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .frame
            .get(self.pos)
            .ok_or("the frame is not CBOR: truncated")?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|end| *end <= self.frame.len())
            .ok_or("the frame is not CBOR: truncated")?;
        self.pos = end;
        Ok(())
    }

    /// (major type, argument); `None` for an indefinite length.
    fn head(&mut self) -> Result<(u8, Option<u64>), String> {
        let first = self.byte()?;
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let len = 1usize << (info - 24);
                let mut v = 0u64;
                for _ in 0..len {
                    v = (v << 8) | u64::from(self.byte()?);
                }
                Some(v)
            }
            31 if matches!(major, 2..=5 | 7) => None,
            _ => return Err("the frame is not CBOR: bad item header".into()),
        };
        Ok((major, arg))
    }

    fn at_break(&mut self) -> Result<bool, String> {
        match self.frame.get(self.pos) {
            Some(&BREAK) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err("the frame is not CBOR: truncated".into()),
        }
    }

    fn item(&mut self, depth: usize) -> Result<(), String> {
        self.items += 1;
        if self.items > self.max_items {
            return Err(format!(
                "the frame has more than {} CBOR items",
                self.max_items
            ));
        }
        if depth > MAX_DEPTH {
            return Err(format!("the frame nests deeper than {MAX_DEPTH} levels"));
        }
        match self.head()? {
            (0 | 1, _) => Ok(()),
            (2 | 3, Some(len)) => self.skip(len),
            (major @ (2 | 3), None) => {
                // Definite-length chunks of the same type, then a break.
                while !self.at_break()? {
                    match self.head()? {
                        (m, Some(len)) if m == major => self.skip(len)?,
                        _ => return Err("the frame is not CBOR: bad string chunk".into()),
                    }
                }
                Ok(())
            }
            (4, Some(n)) => self.entries(n, depth),
            (5, Some(n)) => self.entries(n.saturating_mul(2), depth),
            (4 | 5, None) => {
                while !self.at_break()? {
                    self.item(depth + 1)?;
                }
                Ok(())
            }
            (6, _) => self.item(depth + 1),
            (7, Some(_)) => Ok(()),
            _ => Err("the frame is not CBOR: unexpected break".into()),
        }
    }

    fn entries(&mut self, n: u64, depth: usize) -> Result<(), String> {
        for _ in 0..n {
            self.item(depth + 1)?;
        }
        Ok(())
    }
}
