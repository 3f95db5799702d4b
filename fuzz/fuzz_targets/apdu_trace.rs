//! The trace folder and TLV trees (apdu::trace): total on any sequence of command/response
//! pairs (split on 0xFE as in apdu_describe), every folded exchange keeps the secret bytes of
//! its pieces blanked, and the tree of any data field renders within its node budget.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut f = apdu::trace::Folder::new();
    let parts: Vec<&[u8]> = data.split(|b| *b == 0xFE).collect();
    for pair in parts.chunks(2) {
        let cmd = pair[0];
        let resp = pair.get(1).copied().unwrap_or(&[]);
        // A secret of 4 bytes or more in this piece never reaches a folded exchange: checked
        // when those bytes occur once in the whole input, so that an occurrence in an output
        // can only have come from this piece.
        let secret = apdu::describe::secret_range(cmd)
            .map(|r| cmd[r].to_vec())
            .filter(|s| s.len() >= 4 && s.iter().any(|b| *b != 0))
            .filter(|s| data.windows(s.len()).filter(|w| w == s).count() == 1);
        for e in f.push(cmd, resp, 1) {
            assert!(e.pieces >= 1);
            assert!(e.command_data.len() <= apdu::trace::MAX_DATA);
            assert!(e.response_data.len() <= apdu::trace::MAX_DATA);
            if let Some(s) = &secret {
                assert!(
                    !e.command_data.windows(s.len()).any(|w| w == s.as_slice()),
                    "{e:?}"
                );
            }
            let tree = apdu::trace::tlv_tree(&e.response_data);
            let text = apdu::trace::render(&tree);
            assert!(text.lines().count() <= apdu::trace::MAX_NODES + apdu::trace::MAX_DEPTH + 1);
        }
    }
});
