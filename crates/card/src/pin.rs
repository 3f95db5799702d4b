use std::sync::Arc;
use zeroize::Zeroizing;

/// What a card calls when its PIN blocks: the service turns it into a `PIN_BLOCKED` event.
/// It runs inside the card's `transmit`, with the card's lock held, so it must not wait for
/// anything that lock guards.
pub type PinBlocked = Arc<dyn Fn() + Send + Sync>;

/// A card PIN with a retry counter (ISO 7816-4 §7.5.6: 63Cx tries left, 6983 blocked).
/// Its value is wiped when dropped or changed, and `Debug` shows the counters only.
#[derive(zeroize::ZeroizeOnDrop)]
pub struct Pin {
    value: Zeroizing<Vec<u8>>,
    max_tries: u8,
    tries_left: u8,
    /// Called when a wrong try takes the counter to 0 (code, no secret).
    #[zeroize(skip)]
    on_blocked: Option<PinBlocked>,
}

/// The state a status query reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStatus {
    /// Not blocked: this many tries left.
    TriesLeft(u8),
    /// No tries left.
    Blocked,
}

/// What a verification attempt gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinVerify {
    /// Right PIN; the counter is back at its maximum.
    Ok,
    /// Wrong PIN; this many tries remain (0 = now blocked).
    Wrong(u8),
    /// Already blocked; nothing was compared.
    Blocked,
}

/// What `Debug` of a configuration shows in place of a secret (issue #14: no `{:?}` of a
/// config or PIN prints it): `[redacted]`.
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin")
            .field("value", &Redacted)
            .field("max_tries", &self.max_tries)
            .field("tries_left", &self.tries_left)
            .finish()
    }
}

impl Pin {
    /// A PIN of `value` that blocks after `max_tries` consecutive wrong tries (at least 1).
    pub fn new(value: &[u8], max_tries: u8) -> Self {
        let max_tries = max_tries.clamp(1, 15);
        Pin {
            value: Zeroizing::new(value.to_vec()),
            max_tries,
            tries_left: max_tries,
            on_blocked: None,
        }
    }
    /// Calls `hook` whenever a wrong try blocks the PIN (the counter reaching 0), from now on.
    pub fn set_on_blocked(&mut self, hook: Option<PinBlocked>) {
        self.on_blocked = hook;
    }
    /// Replaces value and counters as [`restore`](Self::restore) would, keeping the hook (a
    /// card's state restored, its retries set anew, a reset).
    pub fn set(&mut self, value: &[u8], max_tries: u8, tries_left: u8) {
        let on_blocked = self.on_blocked.take();
        *self = Pin::restore(value, max_tries, tries_left);
        self.on_blocked = on_blocked;
    }
    /// A PIN as saved: its value, maximum and remaining tries (clamped to 1..15 and ≤ max).
    pub fn restore(value: &[u8], max_tries: u8, tries_left: u8) -> Self {
        let mut p = Pin::new(value, max_tries);
        p.tries_left = tries_left.min(p.max_tries);
        p
    }
    /// The value (for a card's state file).
    pub fn value(&self) -> &[u8] {
        &self.value
    }
    /// Tries before blocking.
    pub fn max_tries(&self) -> u8 {
        self.max_tries
    }
    /// Tries left (0: blocked).
    pub fn tries_left(&self) -> u8 {
        self.tries_left
    }
    /// Tries left, or blocked.
    pub fn status(&self) -> PinStatus {
        match self.tries_left {
            0 => PinStatus::Blocked,
            n => PinStatus::TriesLeft(n),
        }
    }
    /// Sets a new value; the counter is back at its maximum (CHANGE REFERENCE DATA, RESET
    /// RETRY COUNTER).
    pub fn change(&mut self, value: &[u8]) {
        self.value = Zeroizing::new(value.to_vec());
        self.tries_left = self.max_tries;
    }
    /// Compares in constant time and counts the try.
    pub fn verify(&mut self, candidate: &[u8]) -> PinVerify {
        if self.tries_left == 0 {
            return PinVerify::Blocked;
        }
        if aws_lc_rs::constant_time::verify_slices_are_equal(&self.value, candidate).is_ok() {
            self.tries_left = self.max_tries;
            PinVerify::Ok
        } else {
            self.tries_left -= 1;
            if self.tries_left == 0 {
                if let Some(hook) = &self.on_blocked {
                    hook();
                }
            }
            PinVerify::Wrong(self.tries_left)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_blocks_and_resets_on_success() {
        let mut p = Pin::new(b"1234", 3);
        assert_eq!(p.verify(b"0000"), PinVerify::Wrong(2));
        assert_eq!(p.verify(b"1234"), PinVerify::Ok);
        assert_eq!(p.status(), PinStatus::TriesLeft(3));
        assert_eq!(p.verify(b"1"), PinVerify::Wrong(2));
        assert_eq!(p.verify(b"12345"), PinVerify::Wrong(1));
        assert_eq!(p.verify(b""), PinVerify::Wrong(0));
        assert_eq!(p.status(), PinStatus::Blocked);
        assert_eq!(p.verify(b"1234"), PinVerify::Blocked);
    }

    #[test]
    fn the_hook_runs_once_when_the_pin_blocks_and_survives_set() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let mut p = Pin::new(b"1234", 2);
        p.set_on_blocked(Some(Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })));
        assert_eq!(p.verify(b"0"), PinVerify::Wrong(1));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(p.verify(b"0"), PinVerify::Wrong(0));
        assert_eq!(p.verify(b"0"), PinVerify::Blocked);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        p.set(b"5678", 1, 1);
        assert_eq!(p.verify(b"1234"), PinVerify::Wrong(0));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// Every way a `Debug` rendering could carry `secret`: as text, as a byte list
    /// (`[57, 48, ...]`, `[0x39, ...]`), as hex with and without spaces.
    fn assert_absent(what: &str, debug: &str, secret: &[u8]) {
        let hex: Vec<String> = secret.iter().map(|b| format!("{b:02x}")).collect();
        let mut renderings = vec![
            format!("{secret:?}"),
            format!("{secret:02x?}"),
            hex.concat(),
            hex.concat().to_uppercase(),
            hex.join(" "),
            hex.join(" ").to_uppercase(),
        ];
        if let Ok(text) = std::str::from_utf8(secret) {
            renderings.push(text.to_string());
        }
        for r in renderings {
            assert!(
                !debug.contains(&r),
                "{what} shows a secret as {r:?}: {debug}"
            );
        }
        assert!(
            debug.contains("[redacted]"),
            "{what} marks nothing redacted: {debug}"
        );
    }

    /// Issue #14: no `{:?}` of a configuration or PIN type in this crate prints a PIN, PUK,
    /// management key, token PIN, PKCS#12 password or private key.
    #[test]
    fn no_secret_in_debug_output() {
        use crate::cac::CacConfig;
        use crate::keystore::{FileIdentity, Pkcs11Config, TokenSelector};
        use crate::piv::{ManagementKey, PinState, PivConfig, SavedKey, State, ALG_AES128};
        use zeroize::Zeroizing;

        const PIN: &[u8] = b"90210417";
        const PUK: &[u8] = b"57721566";
        const MGMT: &[u8] = b"\xA5\x5A\xC3\x3C\x96\x69\x0F\xF0\xA5\x5A\xC3\x3C\x96\x69\x0F\xF0";
        const TOKEN_PIN: &str = "77665544";
        const P12_PASSWORD: &str = "p12-secret-kumquat";
        const KEY_DER: &[u8] = b"\x30\x82\xDE\xAD\xBE\xEF\xCA\xFE";

        let mut pin = Pin::new(PIN, 3);
        assert_absent("Pin", &format!("{pin:?}"), PIN);
        pin.change(PUK);
        assert_absent("Pin after change", &format!("{pin:?}"), PUK);

        let cac = CacConfig {
            pin: Zeroizing::new(PIN.to_vec()),
            pin_tries: 3,
            ..Default::default()
        };
        assert_absent("CacConfig", &format!("{cac:?}"), PIN);

        let mgmt = ManagementKey::new(ALG_AES128, MGMT).expect("16 bytes is an AES-128 key");
        let piv = PivConfig {
            pin: Zeroizing::new(PIN.to_vec()),
            puk: Zeroizing::new(PUK.to_vec()),
            management_key: mgmt.clone(),
            ..PivConfig::default()
        };
        let piv_debug = format!("{piv:?}");
        for (what, secret) in [
            ("PivConfig PIN", PIN),
            ("PivConfig PUK", PUK),
            ("PivConfig key", MGMT),
        ] {
            assert_absent(what, &piv_debug, secret);
        }
        // The non-secret fields still show.
        assert!(piv_debug.contains("pin_tries: 3"), "{piv_debug}");

        let pkcs11 = Pkcs11Config {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            init_reserved: None,
            token: TokenSelector::Label("t".into()),
            pin: Some(Zeroizing::new(TOKEN_PIN.into())),
            labels: Vec::new(),
            id: None,
        };
        assert_absent("Pkcs11Config", &format!("{pkcs11:?}"), TOKEN_PIN.as_bytes());

        let mut file = FileIdentity::new("id.p12", None);
        file.password = Some(Zeroizing::new(P12_PASSWORD.into()));
        assert_absent(
            "FileIdentity",
            &format!("{file:?}"),
            P12_PASSWORD.as_bytes(),
        );

        let pin_state = |v: &[u8]| PinState {
            value: Zeroizing::new(v.to_vec()),
            tries: 3,
            left: 3,
        };
        let key = SavedKey {
            alg: 0x11,
            origin: 1,
            pin_policy: 2,
            touch_policy: 1,
            der: Zeroizing::new(KEY_DER.to_vec()),
        };
        assert_absent("SavedKey", &format!("{key:?}"), KEY_DER);
        let state = State {
            card: "c".into(),
            pin: pin_state(PIN),
            puk: pin_state(PUK),
            management_key: mgmt,
            objects: Default::default(),
            keys: [(0x9A, key)].into_iter().collect(),
        };
        let state_debug = format!("{state:?}");
        for (what, secret) in [
            ("State PIN", PIN),
            ("State PUK", PUK),
            ("State management key", MGMT),
            ("State private key", KEY_DER),
        ] {
            assert_absent(what, &state_debug, secret);
        }
    }
}
