#![no_main]
// Unlock key text from a prompt or standard input never panics the parser.
libfuzzer_sys::fuzz_target!(|s: &str| {
    if let Ok(k) = coffer_crypto::UnlockKey::parse(s) {
        assert!(coffer_crypto::UnlockKey::parse(&k.to_text()).is_ok());
    }
});
