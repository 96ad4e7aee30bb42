#![no_main]
// Arbitrary bytes never open (nor panic) under a key they were not sealed with.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(env) = coffer_crypto::envelope::Envelope::read(data) {
        assert_eq!(env.encode(), data);
    }
    assert!(coffer_crypto::envelope::open(&[7u8; 32], data, b"aad").is_err());
});
