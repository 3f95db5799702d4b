//! A dual CAC + PIV card, as DoD cards are: one card whose SELECT by AID picks the
//! application (ISO 7816-4 §8.2.2.2), each application keeping its own state. The ATR is the
//! CAC card's (libcacard's), so guests that expect QEMU's card still see it.
//!
//! Which driver a host picks is the host's choice: OpenSC 0.23 tries `PIV-II` before `cac`,
//! so it uses the PIV application unless told otherwise (`OPENSC_DRIVER=cac`, or
//! `card_drivers = cac` in opensc.conf).

use crate::cac::CacCard;
use crate::piv::{PivCard, PIV_AID};
use crate::{Card, Presence};

/// Which application the last SELECT chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    Cac,
    Piv,
}

/// The CAC applets and the PIV application on one card.
#[derive(Debug)]
pub struct DualCard {
    cac: CacCard,
    piv: PivCard,
    current: Current,
}

impl DualCard {
    /// Both applications; the CAC one is selected at power-on, as on libcacard's card.
    pub fn new(cac: CacCard, piv: PivCard) -> Self {
        DualCard {
            cac,
            piv,
            current: Current::Cac,
        }
    }

    /// The PIV application (its serial, its state).
    pub fn piv(&self) -> &PivCard {
        &self.piv
    }

    /// The PIV application, for the service's administration (enrollment, PIN).
    pub fn piv_mut(&mut self) -> &mut PivCard {
        &mut self.piv
    }

    /// The CAC application (its status).
    pub fn cac(&self) -> &CacCard {
        &self.cac
    }

    /// The CAC application, for the service's administration (PIN).
    pub fn cac_mut(&mut self) -> &mut CacCard {
        &mut self.cac
    }
}

/// The application a SELECT by DF name (P1 = 04) asks for: PIV for the PIV AID or its
/// right-truncated form (at least the 5-byte RID and PIX start), CAC for any other name.
/// Short and extended length fields alike (ISO 7816-3 §12.1.3).
fn selects(apdu: &[u8]) -> Option<Current> {
    let cmd = apdu::Command::parse(apdu).ok()?;
    if cmd.cla & 0x80 != 0 || cmd.ins != 0xA4 || cmd.p1 != 0x04 {
        return None;
    }
    let name = cmd.data;
    Some(if name.len() >= 5 && PIV_AID.starts_with(name) {
        Current::Piv
    } else {
        Current::Cac
    })
}

impl Card for DualCard {
    fn atr(&self) -> Vec<u8> {
        self.cac.atr()
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.piv.power_on();
        self.current = Current::Cac;
        self.cac.power_on()
    }
    fn power_off(&mut self) {
        self.piv.power_off();
        self.cac.power_off();
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        if let Some(app) = selects(apdu) {
            // Leaving PIV for another application deselects it: its PIN status, chain and
            // pending response do not wait for its return (SP 800-73-4 Part 2 §3.1.1). The CAC
            // side keeps its login, which libcacard holds card-wide, not per applet.
            if self.current == Current::Piv && app == Current::Cac {
                self.piv.deselect();
            }
            self.current = app;
        }
        match self.current {
            Current::Cac => self.cac.transmit(apdu),
            Current::Piv => self.piv.transmit(apdu),
        }
    }
    fn presence(&self) -> Presence {
        self.cac.presence()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cac::CacConfig;
    use crate::keystore::{DefaultIdentities, FileStore, KeyStore, SharedStore};
    use crate::piv::PivConfig;
    use apdu::hex::{h, spaced};

    /// A dual card over the default identities (RSA for both, P-256 for PIV's 9E), powered.
    fn dual() -> (DualCard, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let files = DefaultIdentities::new(dir.path())
            .ensure_with_ecc()
            .unwrap();
        let shared = SharedStore::new(Box::new(FileStore::open(&files).unwrap()));
        let rsa = shared.view(|id| id.ec_curve.is_none());
        let cac = CacCard::new(Box::new(rsa), &CacConfig::default()).unwrap();
        let piv = PivCard::new(Box::new(shared), &PivConfig::default()).unwrap();
        let mut c = DualCard::new(cac, piv);
        c.power_on();
        (c, dir)
    }

    const SELECT_PIV: &str = "00 A4 04 00 05 A0 00 00 03 08";
    const SELECT_CAC: &str = "00 A4 04 00 07 A0 00 00 00 79 01 00";

    /// Found by the piv_session fuzz target: a chain begun in PIV outlived a SELECT of a CAC
    /// applet, so PIV's next SELECT was taken as its wrong piece (6883) and not carried out.
    #[test]
    fn a_select_of_cac_drops_the_piv_chain() {
        let (mut c, _dir) = dual();
        let tx = |c: &mut DualCard, s: &str| spaced(&c.transmit(&h(s)));
        assert!(tx(&mut c, SELECT_PIV).ends_with("90 00"));
        assert_eq!(tx(&mut c, "10 CB 3F FF 02 5C 03"), "90 00");
        tx(&mut c, SELECT_CAC);
        assert!(tx(&mut c, SELECT_PIV).ends_with("90 00"));
        // The chain's last piece alone is no tag list, so no CHUID comes back.
        assert_eq!(tx(&mut c, "00 CB 3F FF 03 5F C1 02 00"), "6A 80");
    }

    /// Found by the piv_session fuzz target: the PIV PIN verified before a SELECT of a CAC
    /// applet still counted when PIV was selected again (SP 800-73-4 Part 2 §3.1.1: deselected,
    /// all its security status indicators are FALSE).
    #[test]
    fn a_select_of_cac_clears_the_piv_pin_status() {
        let (mut c, _dir) = dual();
        let tx = |c: &mut DualCard, s: &str| spaced(&c.transmit(&h(s)));
        tx(&mut c, SELECT_PIV);
        assert_eq!(
            tx(&mut c, "00 20 00 80 08 31 32 33 34 35 36 FF FF"),
            "90 00"
        );
        assert_eq!(tx(&mut c, "00 20 00 80"), "90 00");
        // Selecting PIV again while it is selected keeps the status (§3.1.1).
        tx(&mut c, SELECT_PIV);
        assert_eq!(tx(&mut c, "00 20 00 80"), "90 00");
        tx(&mut c, SELECT_CAC);
        tx(&mut c, SELECT_PIV);
        assert_eq!(tx(&mut c, "00 20 00 80"), "63 C3");
    }

    #[test]
    fn an_extended_select_picks_the_application_too() {
        let (mut c, _dir) = dual();
        let tx = |c: &mut DualCard, s: &str| spaced(&c.transmit(&h(s)));
        let r = tx(&mut c, "00 A4 04 00 00 00 05 A0 00 00 03 08 00 00");
        assert!(r.starts_with("61 36 4F 06") && r.ends_with("90 00"), "{r}");
    }

    #[test]
    fn select_picks_the_application_and_both_sign_with_one_store() {
        let dir = tempfile::tempdir().unwrap();
        let files = DefaultIdentities::new(dir.path())
            .ensure_with_ecc()
            .unwrap();
        let shared = SharedStore::new(Box::new(FileStore::open(&files).unwrap()));
        let rsa = shared.view(|id| id.ec_curve.is_none());
        assert_eq!((rsa.identities().len(), shared.identities().len()), (3, 4));
        let cac = CacCard::new(Box::new(rsa), &CacConfig::default()).unwrap();
        let piv = PivCard::new(Box::new(shared), &PivConfig::default()).unwrap();
        let mut c = DualCard::new(cac, piv);
        let atr = c.power_on();
        assert_eq!(atr, c.cac.atr());
        let tx = |c: &mut DualCard, s: &str| spaced(&c.transmit(&h(s)));
        // PIV by its truncated AID: the application property template.
        let r = tx(&mut c, "00 A4 04 00 09 A0 00 00 03 08 00 00 10 00 00");
        assert!(r.starts_with("61 36 4F 06") && r.ends_with("90 00"), "{r}");
        assert!(tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 01 00").starts_with("53 "));
        // A CAC applet: the CAC application answers, and PIV commands get its answers.
        // (libcacard's applets answer a SELECT with 61 xx: the FCI waits for GET RESPONSE.)
        assert_eq!(tx(&mut c, "00 A4 04 00 07 A0 00 00 00 79 01 00"), "61 0D");
        assert!(!tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 01 00").starts_with("53 "));
        // PIV's 9E holds the P-256 identity; the CAC side never sees it.
        tx(&mut c, "00 A4 04 00 05 A0 00 00 03 08");
        let r = tx(&mut c, "00 F7 00 9E 00");
        assert!(r.starts_with("01 01 11"), "{r}");
        // An unknown AID goes to the CAC side, which does not know it either.
        assert_eq!(tx(&mut c, "00 A4 04 00 05 D2 76 00 01 24"), "6A 82");
    }
}
