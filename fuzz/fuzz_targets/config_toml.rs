//! Operator configuration files: the coordinator's (through the same generic parser the
//! other roles use) and `scold dns`'s and `scold resolver`'s.
//!
//! Properties: nothing panics on any text (the error messages point into the text, so
//! they are computed from spans); errors name the file; a DNS configuration that is
//! accepted keeps its promises (listen addresses present, ALT type private-use).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scold_control::config::Config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/scold/fuzz.toml");
    match scold_daemon::parse::<Config>(text, path, "scold coordinator --example-config") {
        Ok(cfg) => {
            let _ = format!("{cfg:?}");
        }
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(
                msg.contains("/etc/scold/fuzz.toml"),
                "error does not name the file: {msg}"
            );
        }
    }

    match scold_dns::config::parse_dns(text, path) {
        Ok(cfg) => {
            assert!(!cfg.listen.is_empty());
            assert!((65280..=65534).contains(&cfg.alt_type));
            assert!(!cfg.zones.is_empty());
            assert!(cfg.tcp_max_connections >= 1);
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
    if let Ok(cfg) = scold_dns::config::parse_resolver(text, path) {
        let _ = format!("{cfg:?}");
    }
});
