//! Text that is or may hold a secret, as the programs take it (issue #17): wiped when dropped,
//! and never shown by `Debug`. [`Secret`] is a secret outright (a PIN, a PUK, a raw control
//! request); [`SpecText`] is a `--card` specification or one `KEY=VALUE` of it, whose `Debug`
//! shows it with the values of `pin=`, `puk=` and a PKCS#11 URI's `pin-value=` redacted.
//! [`WipedJson`] is a JSON value whose strings are wiped when it is dropped: a control request
//! carrying a PIN, a PUK or a private key.

use serde_json::Value;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret string: wiped when dropped; `Debug` shows `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    /// The secret.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&card::Redacted, f)
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// A card specification (or one of its `KEY=VALUE` properties): wiped when dropped; `Debug`
/// shows it as [`crate::spec::redact`] does.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SpecText(String);

impl SpecText {
    /// The specification.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SpecText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&crate::spec::redact(&self.0), f)
    }
}

impl std::ops::Deref for SpecText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SpecText {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SpecText(s.to_string()))
    }
}

/// A JSON value whose strings (keys aside) are wiped when it is dropped; `Debug` shows the
/// object's keys only.
#[derive(Clone, Default, PartialEq)]
pub struct WipedJson(pub Value);

impl Drop for WipedJson {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl ZeroizeOnDrop for WipedJson {}

impl std::ops::Deref for WipedJson {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl std::fmt::Debug for WipedJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Value::Object(m) => f
                .debug_struct("WipedJson")
                .field("keys", &m.keys().collect::<Vec<_>>())
                .finish(),
            _ => f.write_str("WipedJson(..)"),
        }
    }
}

/// Wipes every string inside `v` (object keys aside: names, not values).
pub fn wipe(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(wipe),
        Value::Object(m) => m.values_mut().for_each(wipe),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_reaches_every_string() {
        let mut v = serde_json::json!({"a": "pin", "b": ["puk", {"c": "key"}], "n": 1});
        wipe(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": "", "b": ["", {"c": ""}], "n": 1})
        );
    }
}
