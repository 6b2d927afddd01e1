//! Handshake negotiation: versions, feature bits, codecs, compression, auth, limits.

use polycall_core::Code;
use polycall_proto::compress::Algorithm;
use polycall_proto::{AuthMethod, Limits, Negotiated, Settings, features, negotiate};

fn with_versions(lo: u16, hi: u16) -> Settings {
    Settings::default().min_version(lo).max_version(hi)
}

#[test]
fn overlapping_ranges_agree_on_the_highest_common_version() {
    for ((clo, chi), (slo, shi), agreed) in [
        ((1, 3), (2, 2), 2),
        ((1, 3), (2, 5), 3),
        ((2, 5), (1, 3), 3),
        ((1, 1), (1, 1), 1),
        ((1, 9), (9, 12), 9),
    ] {
        let w = negotiate(&with_versions(slo, shi), &with_versions(clo, chi).hello()).unwrap();
        assert_eq!(
            w.version, agreed,
            "client {clo}..={chi}, server {slo}..={shi}"
        );
        let n = Negotiated::for_client(&with_versions(clo, chi), &w).unwrap();
        assert_eq!(n.version, agreed);
    }
}

#[test]
fn disjoint_ranges_end_with_an_error_naming_both() {
    for ((clo, chi), (slo, shi)) in [((1, 1), (2, 2)), ((3, 4), (1, 2)), ((5, 5), (1, 4))] {
        let e = negotiate(&with_versions(slo, shi), &with_versions(clo, chi).hello()).unwrap_err();
        assert_eq!(e.call_id, 0);
        assert_eq!(Code::from_u16(e.code), Code::VersionMismatch);
        assert_eq!(e.supported_versions, Some((slo, shi)));
        assert!(
            e.message.contains(&format!("client offers {clo}..={chi}")),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains(&format!("server supports {slo}..={shi}")),
            "{}",
            e.message
        );
    }
}

#[test]
fn an_empty_client_range_is_malformed() {
    let e = negotiate(&Settings::default(), &with_versions(3, 1).hello()).unwrap_err();
    assert_eq!(Code::from_u16(e.code), Code::Malformed);
}

#[test]
fn a_welcome_outside_the_offer_is_refused() {
    let client = with_versions(1, 2);
    let mut w = negotiate(&with_versions(1, 2), &client.hello()).unwrap();
    w.version = 3;
    assert_eq!(
        Negotiated::for_client(&client, &w).unwrap_err().code,
        Code::Malformed
    );
    let mut w = negotiate(&with_versions(1, 2), &client.hello()).unwrap();
    w.features |= 1 << 40;
    assert_eq!(
        Negotiated::for_client(&client, &w).unwrap_err().code,
        Code::Malformed
    );
}

#[test]
fn unknown_feature_bits_are_ignored() {
    let mut client = Settings::default();
    client.features = features::CRC32C | features::STREAMING | (1 << 63) | (1 << 17);
    let mut server = Settings::default();
    server.features = features::STREAMING | (1 << 63);
    let w = negotiate(&server, &client.hello()).unwrap();
    // bit 63 is offered by both but unknown to this version: dropped, not an error
    assert_eq!(w.features, features::STREAMING);
    let n = Negotiated::for_client(&client, &w).unwrap();
    assert!(n.has(features::STREAMING));
    assert!(!n.has(features::CRC32C));
}

#[test]
fn crc_is_on_only_when_both_offer_it() {
    let plain = Settings::default();
    let tls = Settings::authenticated_transport();
    assert!(negotiate(&plain, &plain.hello()).unwrap().features & features::CRC32C != 0);
    assert_eq!(
        negotiate(&tls, &plain.hello()).unwrap().features & features::CRC32C,
        0
    );
    assert_eq!(
        negotiate(&plain, &tls.hello()).unwrap().features & features::CRC32C,
        0
    );
}

#[test]
#[cfg(all(feature = "zstd", feature = "brotli"))]
fn codecs_and_compression_fall_back() {
    use polycall_core::ContentType;
    let mut client = Settings::default();
    client.codecs = vec![ContentType::Postcard, ContentType::Json];
    client.compressions = vec![Algorithm::Brotli];
    let mut server = Settings::default();
    server.codecs = vec![ContentType::Json, ContentType::Raw];
    server.compressions = vec![Algorithm::Zstd, Algorithm::None];
    let w = negotiate(&server, &client.hello()).unwrap();
    // JSON is common; raw is always available even when the client did not list it
    assert_eq!(
        w.codecs,
        vec![ContentType::Json.id(), ContentType::Raw.id()]
    );
    // nothing in common but "none", which is always available
    assert_eq!(w.compressions, vec![Algorithm::None.id()]);
    let n = Negotiated::for_client(&client, &w).unwrap();
    assert_eq!(n.compressions, vec![Algorithm::None]);

    // Server order decides among common choices; unknown ids the client sends are skipped.
    let mut hello = Settings::default().hello();
    hello.compressions = vec![Algorithm::Brotli.id(), 77, Algorithm::Zstd.id()];
    hello.codecs = vec![200, ContentType::Postcard.id()];
    let w = negotiate(&Settings::default(), &hello).unwrap();
    assert_eq!(
        w.compressions,
        vec![
            Algorithm::Zstd.id(),
            Algorithm::Brotli.id(),
            Algorithm::None.id()
        ]
    );
    assert_eq!(
        w.codecs,
        vec![ContentType::Postcard.id(), ContentType::Raw.id()]
    );
}

#[test]
fn no_common_auth_method_is_unauthenticated() {
    let mut hello = Settings::default().hello();
    hello.auth_methods = vec![AuthMethod::Opaque as u8];
    let e = negotiate(&Settings::default(), &hello).unwrap_err();
    assert_eq!(Code::from_u16(e.code), Code::Unauthenticated);
}

#[test]
fn the_servers_first_method_the_client_offers_is_chosen() {
    let mut server = Settings::default();
    server.auth_methods = vec![
        AuthMethod::Certificate,
        AuthMethod::Opaque,
        AuthMethod::Token,
    ];
    let mut client = Settings::default();
    client.auth_methods = vec![AuthMethod::Token, AuthMethod::Opaque];
    let w = negotiate(&server, &client.hello()).unwrap();
    assert_eq!(w.auth_method, AuthMethod::Opaque as u8);
    let n = Negotiated::for_client(&client, &w).unwrap();
    assert_eq!(n.auth_method, AuthMethod::Opaque);
}

#[test]
fn settings_without_any_auth_method_are_refused() {
    let mut s = Settings::default();
    s.auth_methods.clear();
    let err = s.validate().unwrap_err();
    assert!(
        err.to_string().contains("no authentication method"),
        "{err}"
    );
}

#[test]
fn absurd_limits_are_refused() {
    let mut hello = Settings::default().hello();
    hello.limits = Limits::default().max_frame(10);
    let e = negotiate(&Settings::default(), &hello).unwrap_err();
    assert_eq!(Code::from_u16(e.code), Code::InvalidInput);
    assert!(e.message.contains("max_frame 10"), "{}", e.message);
}

#[test]
fn each_side_sends_within_the_other_sides_limits() {
    let mut client = Settings::default();
    client.limits.max_frame = 4096;
    let mut server = Settings::default();
    server.limits.max_frame = 8192;
    let hello = client.hello();
    let w = negotiate(&server, &hello).unwrap();
    let c = Negotiated::for_client(&client, &w).unwrap();
    let s = Negotiated::for_server(&server, &hello, &w);
    assert_eq!(
        (c.local_limits.max_frame, c.peer_limits.max_frame),
        (4096, 8192)
    );
    assert_eq!(
        (s.local_limits.max_frame, s.peer_limits.max_frame),
        (8192, 4096)
    );
}

/// A build offers only the compression it can decode, and refuses settings that ask for more.
#[test]
fn only_built_compression_is_offered() {
    let hello = Settings::default().hello();
    for id in &hello.compressions {
        let algorithm = Algorithm::from_id(*id).unwrap();
        assert!(algorithm.is_built(), "{algorithm} offered but not built");
    }
    assert_eq!(hello.compressions.last(), Some(&Algorithm::None.id()));
    for algorithm in Algorithm::ALL.into_iter().filter(|a| !a.is_built()) {
        let mut settings = Settings::default();
        settings.compressions = vec![algorithm, Algorithm::None];
        let err = settings.validate().unwrap_err();
        assert!(err.to_string().contains("not built"), "{err}");
        // A peer that offers it anyway is answered without it.
        let mut hello = Settings::default().hello();
        hello.compressions = vec![algorithm.id(), Algorithm::None.id()];
        let w = negotiate(&Settings::default(), &hello).unwrap();
        assert_eq!(w.compressions, vec![Algorithm::None.id()]);
    }
}

/// `zstd-dict` is agreed with feature bit 2, never by the list: settings that list it are
/// refused, and a WELCOME listing it (or any compression not offered) fails the client's
/// check. With the bit, both sides add it to what they agreed.
#[test]
#[cfg(feature = "zstd")]
fn dictionaries_are_agreed_by_the_feature_bit_only() {
    let mut listed = Settings::default();
    listed.compressions.insert(0, Algorithm::ZstdDict);
    assert_eq!(
        listed.validate(),
        Err(polycall_proto::ConfigError::DictionaryListed)
    );

    let client = Settings::default();
    assert_ne!(client.features & features::ZSTD_DICTIONARIES, 0);
    let mut w = negotiate(&Settings::default(), &client.hello()).unwrap();
    assert_ne!(w.features & features::ZSTD_DICTIONARIES, 0);
    assert!(!w.compressions.contains(&Algorithm::ZstdDict.id()));
    w.compressions.insert(0, Algorithm::ZstdDict.id());
    let e = Negotiated::for_client(&client, &w).unwrap_err();
    assert!(e.message.contains("compression 3 not offered"), "{e}");
}
