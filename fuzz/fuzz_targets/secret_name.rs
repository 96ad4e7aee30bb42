#![no_main]
// Names that parse are safe file names under /run/secrets.
libfuzzer_sys::fuzz_target!(|s: &str| {
    if let Ok(n) = coffer_core::SecretName::new(s) {
        assert!(!n.as_str().contains('/') && !n.as_str().starts_with('.') && n.as_str().len() <= 64);
    }
});
