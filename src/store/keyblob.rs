//! A message's wrapped keys as one blob, shared by the SQLite and
//! PostgreSQL stores: one row per message however large the room, and a
//! reader takes out only its own key.

/// Wrapped keys as one blob: `u16 count`, then per recipient (in name order)
/// `u8 name length, name, u16 key length, key`, all big-endian.
pub fn encode_keys(keys: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        2 + keys
            .iter()
            .map(|(n, k)| 3 + n.len() + k.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&(keys.len() as u16).to_be_bytes());
    for (name, key) in keys {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
    }
    out
}

/// The key for `username` in a blob made by [`encode_keys`].
pub fn find_key(blob: &[u8], username: &str) -> Option<Vec<u8>> {
    let count = u16::from_be_bytes(blob.get(0..2)?.try_into().ok()?);
    let mut at = 2;
    for _ in 0..count {
        let name_len = *blob.get(at)? as usize;
        let name = blob.get(at + 1..at + 1 + name_len)?;
        at += 1 + name_len;
        let key_len = u16::from_be_bytes(blob.get(at..at + 2)?.try_into().ok()?) as usize;
        at += 2;
        if name == username.as_bytes() {
            return blob.get(at..at + key_len).map(<[u8]>::to_vec);
        }
        at += key_len;
    }
    None
}

/// Every (recipient, key) of a blob made by [`encode_keys`]; `None` when it
/// is malformed.
pub fn decode_keys(blob: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let count = u16::from_be_bytes(blob.get(0..2)?.try_into().ok()?);
    let mut out = Vec::with_capacity(count as usize);
    let mut at = 2;
    for _ in 0..count {
        let name_len = *blob.get(at)? as usize;
        let name = std::str::from_utf8(blob.get(at + 1..at + 1 + name_len)?).ok()?;
        at += 1 + name_len;
        let key_len = u16::from_be_bytes(blob.get(at..at + 2)?.try_into().ok()?) as usize;
        at += 2;
        out.push((name.to_owned(), blob.get(at..at + key_len)?.to_vec()));
        at += key_len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_blob_round_trip() {
        let keys = vec![
            ("alice".to_string(), vec![1u8; 256]),
            ("bob".to_string(), vec![2u8; 512]),
        ];
        let blob = encode_keys(&keys);
        assert_eq!(find_key(&blob, "alice"), Some(vec![1u8; 256]));
        assert_eq!(find_key(&blob, "bob"), Some(vec![2u8; 512]));
        assert_eq!(find_key(&blob, "carol"), None);
        assert_eq!(decode_keys(&blob), Some(keys.clone()));
        assert_eq!(decode_keys(&blob[..100]), None);
        assert_eq!(
            find_key(&blob[..100], "bob"),
            None,
            "a truncated blob finds nothing"
        );
        assert_eq!(find_key(&[], "bob"), None);
    }
}
