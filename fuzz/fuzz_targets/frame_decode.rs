//! Any bytes: decoding never panics, never allocates past the limit, and every frame it
//! accepts re-encodes to exactly the bytes it was decoded from (canonical encoding).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use polycall_proto::frame;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let crc = mode & 1 == 1;
    let max = if mode & 2 == 2 { 1 << 20 } else { 4096 };
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match frame::decode(&mut buf, max, crc) {
            Ok(Some(f)) => {
                let used = before.len() - buf.len();
                assert_eq!(&f.to_bytes(crc)[..], &before[..used], "non-canonical accept: {f:?}");
            }
            Ok(None) | Err(_) => break,
        }
    }
});
