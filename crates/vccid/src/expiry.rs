//! Warnings for certificates that have expired or soon will (issue #13): a card whose
//! certificate expired fails logins far from here (OpenSC and SSSD reject it quietly), so the
//! program says it when it loads the certificate.

use std::time::{Duration, SystemTime};
use x509_cert::der::Decode;

/// How far ahead an expiry is announced.
pub const SOON: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the validity period says at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Valid for more than [`SOON`].
    Fine,
    /// Valid, but ends within [`SOON`]: the date (RFC 3339, UTC) and the whole days left.
    Soon { date: String, days: u64 },
    /// Ended on the date.
    Expired { date: String },
}

/// The certificate's notAfter (RFC 5280 §4.1.2.5) and its RFC 3339 form (UTC); `None` when
/// the bytes are no X.509 certificate.
fn read_not_after(cert_der: &[u8]) -> Option<(SystemTime, String)> {
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let t = cert.tbs_certificate().validity().not_after.to_system_time();
    let date = time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into());
    Some((t, date))
}

/// The certificate's notAfter, RFC 3339 UTC; `None` when the bytes are no X.509 certificate.
pub fn not_after(cert_der: &[u8]) -> Option<String> {
    read_not_after(cert_der).map(|(_, date)| date)
}

/// What the certificate's validity period says at `now`; `None` when the bytes are no X.509
/// certificate.
pub fn expiry(cert_der: &[u8], now: SystemTime) -> Option<Expiry> {
    let (not_after, date) = read_not_after(cert_der)?;
    Some(match not_after.duration_since(now) {
        Err(_) => Expiry::Expired { date },
        Ok(left) if left <= SOON => Expiry::Soon {
            date,
            days: left.as_secs() / 86_400,
        },
        Ok(_) => Expiry::Fine,
    })
}

/// Logs a warning for a certificate that has expired or ends within 30 days.
pub fn warn(what: &str, cert_der: &[u8]) {
    match expiry(cert_der, SystemTime::now()) {
        Some(Expiry::Expired { date }) => {
            tracing::warn!("certificate {what} expired on {date}: hosts will refuse it")
        }
        Some(Expiry::Soon { date, days }) => {
            tracing::warn!("certificate {what} expires on {date}, in {days} days")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_after: SystemTime) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        p.not_before = time::OffsetDateTime::from(not_after - Duration::from_secs(86_400 * 400));
        p.not_after = time::OffsetDateTime::from(not_after);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn expired_soon_and_fine() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        assert!(matches!(
            expiry(&cert(now - day), now),
            Some(Expiry::Expired { .. })
        ));
        assert!(matches!(
            expiry(&cert(now + day * 10 + Duration::from_secs(60)), now),
            Some(Expiry::Soon { days: 10, .. })
        ));
        assert_eq!(expiry(&cert(now + day * 31), now), Some(Expiry::Fine));
        assert_eq!(expiry(b"\x30\x03\x02\x01\x00", now), None);
    }
}
