//! The APDU decoder behind `-vv` (apdu::describe): total on any command/response pair, and
//! the line it prints never holds the data field of a command that carries a secret (VERIFY,
//! CHANGE REFERENCE DATA, RESET RETRY COUNTER, management-key GENERAL AUTHENTICATE, IMPORT
//! KEY, SET MANAGEMENT KEY). The input is split on 0xFE into command, response, command, ...
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = apdu::describe::Decoder::new();
    let parts: Vec<&[u8]> = data.split(|b| *b == 0xFE).collect();
    for pair in parts.chunks(2) {
        let cmd = pair[0];
        let resp = pair.get(1).copied().unwrap_or(&[]);
        let line = d.exchange(cmd, resp);
        let redacted = apdu::describe::redact_command(cmd);
        assert_eq!(redacted.len(), cmd.len());
        if let Some(r) = apdu::describe::secret_range(cmd) {
            assert!(redacted[r.clone()].iter().all(|b| *b == 0));
            // A secret of 4 bytes or more never shows up as hex in the line.
            let secret = &cmd[r];
            if secret.len() >= 4 && secret.iter().any(|b| *b != 0) {
                let hex: String = secret.iter().map(|b| format!("{b:02X}")).collect();
                assert!(!line.contains(&hex), "{line}");
            }
        }
        let _ = apdu::describe::redact_response(resp);
    }
});
