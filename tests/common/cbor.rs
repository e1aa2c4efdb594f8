//! Reading the CBOR files tests rely on (fixture keys, the protocol's test
//! vectors): a file under `tests/`, and map fields by name.

use ciborium::Value;

/// A CBOR map of text keys, encoded: a frame built by hand (bad input).
pub fn map(entries: Vec<(&str, Value)>) -> Vec<u8> {
    let v = Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).unwrap();
    out
}

/// The CBOR value in `tests/{path}`.
pub fn load(path: &str) -> Value {
    let file = format!("{}/tests/{path}", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    ciborium::from_reader(raw.as_slice()).unwrap()
}

/// Field `key` of map `v`.
pub fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some(key)))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in the map"))
}

/// Field `key` of map `v`, a byte string.
pub fn bytes(v: &Value, key: &str) -> Vec<u8> {
    get(v, key)
        .as_bytes()
        .unwrap_or_else(|| panic!("{key} is not bytes"))
        .clone()
}

/// Field `key` of map `v`, a text string.
pub fn text(v: &Value, key: &str) -> String {
    get(v, key)
        .as_text()
        .unwrap_or_else(|| panic!("{key} is not text"))
        .to_owned()
}
