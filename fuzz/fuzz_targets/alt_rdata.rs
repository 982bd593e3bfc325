//! The ALT record codec: wire RDATA from answers, presentation text from zone files,
//! `nsupdate` input and the operator.
//!
//! Properties: wire RDATA decodes iff it is 4 or 16 bytes, and encodes back to the same
//! bytes; any text that decodes as ALT decodes again, to the same address, from each of
//! its printed forms (address, RFC 3597 generic, with and without the type); generic
//! RDATA text that parses re-parses from its canonical form to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scold_dns::alt::{
    parse_generic_rdata, parse_type_and_rdata, to_generic_type_and_rdata,
    to_mnemonic_type_and_rdata, AltError, AltRdata, DEFAULT_ALT_TYPE,
};

fn check_text_forms(r: AltRdata, alt_type: u16) {
    for text in [r.to_string(), r.to_generic()] {
        assert_eq!(AltRdata::from_presentation(&text), Ok(r), "{text:?}");
    }
    let generic = to_generic_type_and_rdata(&r, alt_type);
    assert_eq!(
        parse_type_and_rdata(&generic, alt_type),
        Ok(r),
        "{generic:?}"
    );
    let mnemonic = to_mnemonic_type_and_rdata(&r);
    assert_eq!(
        parse_type_and_rdata(&mnemonic, alt_type),
        Ok(r),
        "{mnemonic:?}"
    );
    assert_eq!(AltRdata::from_wire(&r.to_wire()), Ok(r));
}

fuzz_target!(|data: &[u8]| {
    match AltRdata::from_wire(data) {
        Ok(r) => {
            assert!(data.len() == 4 || data.len() == 16);
            assert_eq!(r.to_wire(), data);
            assert_eq!(r.addr().is_ipv4(), data.len() == 4);
            check_text_forms(r, DEFAULT_ALT_TYPE);
        }
        Err(e) => assert_eq!(e, AltError::BadLength(data.len())),
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The ALT code comes from the configuration; the first two bytes pick one.
    let alt_type = match data {
        [a, b, ..] => 65280 + (u16::from_be_bytes([*a, *b]) % 255),
        _ => DEFAULT_ALT_TYPE,
    };
    if let Ok(r) = AltRdata::from_presentation(text) {
        check_text_forms(r, alt_type);
    }
    if let Ok(r) = parse_type_and_rdata(text, alt_type) {
        check_text_forms(r, alt_type);
    }
    if let Ok(bytes) = parse_generic_rdata(text) {
        let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
        let canonical = format!("\\# {} {hex}", bytes.len());
        assert_eq!(parse_generic_rdata(&canonical), Ok(bytes), "{canonical:?}");
    }
});
