//! libpolycall's wire formats, sans-IO, so one listener can serve existing libpolycall
//! clients (`docs/libpolycall.md` §1 and §2 of the reference):
//!
//! - [`pcr1`]: the PCR1 framing of the newest libpolycall runtime (16-byte big-endian
//!   header + a JSON payload) and its request / response / control shapes.
//! - [`v1`]: the first-generation 16-byte little-endian header, its handshake, and the
//!   session state machine INIT → HANDSHAKE → AUTH → READY.
//!
//! Both bound every length ([`MAX_MESSAGE`] by default) and check a header before its
//! body arrives, so an oversize or garbled message is refused without buffering it.
//!
//! ```
//! use bytes::BytesMut;
//! use polycall_proto::legacy::pcr1::{self, Kind};
//! let mut buf = BytesMut::new();
//! pcr1::encode(Kind::Request, 7, br#"{"service":"debug","operation":"echo","input":1}"#, &mut buf).unwrap();
//! let msg = pcr1::Decoder::default().decode(&mut buf).unwrap().unwrap();
//! assert_eq!((msg.kind, msg.correlation_id), (Kind::Request, 7));
//! ```

pub mod pcr1;
pub mod v1;

/// The largest payload either legacy format carries by default: 1 MiB.
pub const MAX_MESSAGE: u32 = 1_048_576;
