#![no_main]
// Names that parse are safe file names under /run/secrets; so are the targets of grants
// that parse, and a parsed grant's canonical SPEC parses back to it.
use coffer_core::grant::{Delivery, Grant, OnRotate};

libfuzzer_sys::fuzz_target!(|s: &str| {
    if let Ok(n) = coffer_core::SecretName::new(s) {
        assert!(!n.as_str().contains('/') && !n.as_str().starts_with('.') && n.as_str().len() <= 64);
    }
    if let Ok(g) = Grant::parse(s, OnRotate::Live) {
        if let Delivery::File { target, .. } = &g.delivery {
            assert!(!target.contains('/') && target != "..");
        }
        assert_eq!(Grant::parse(&g.to_string(), OnRotate::Restart).ok(), Some(g));
    }
});
