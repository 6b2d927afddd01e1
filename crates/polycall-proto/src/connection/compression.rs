//! Compression of outgoing messages: inline for small ones, as a job another thread
//! runs for large ones; the per-method dictionaries (trained by a job, shipped in a
//! `DICTIONARY` frame) and the peer's.

use super::*;
#[cfg(feature = "zstd")]
use crate::compress::{TrainJob, TrainedDictionary};

impl Connection {
    /// With [`features::ZSTD_DICTIONARIES`] agreed and zstd readable by both, messages
    /// may go as [`Algorithm::ZstdDict`]; dictionaries fit the peer's frames.
    pub(super) fn agree_dictionaries(&mut self, n: &mut crate::handshake::Negotiated) {
        #[cfg(feature = "zstd")]
        if n.has(features::ZSTD_DICTIONARIES) && n.compressions.contains(&Algorithm::Zstd) {
            n.compressions.push(Algorithm::ZstdDict);
            // A frame's header (and CRC trailer) and the id take the rest.
            let room = (n.peer_limits.max_frame as usize).saturating_sub(32);
            self.compressor.limit_dictionary_size(room);
        }
        #[cfg(not(feature = "zstd"))]
        let _ = n;
    }

    /// A dictionary training job for a method whose small messages were sampled:
    /// run it away from the event loop ([`TrainJob::run`]) and hand the result to
    /// [`Connection::add_dictionary`]. Only with [`features::ZSTD_DICTIONARIES`]
    /// agreed and a link slow enough for compressing small messages to pay.
    #[cfg(feature = "zstd")]
    pub fn take_dictionary_job(&mut self) -> Option<TrainJob> {
        self.compressor.take_dictionary_job()
    }

    /// Puts a trained dictionary in use: it is sent to the peer (a `DICTIONARY`
    /// frame, ahead of every message compressed with it) and the method's small
    /// messages may go with it from now on. Returns the dictionary's id, or `None`
    /// when the training gave nothing worth using or the connection is no longer
    /// open.
    #[cfg(feature = "zstd")]
    pub fn add_dictionary(&mut self, trained: TrainedDictionary) -> Option<u32> {
        if self.state != State::Open {
            return None;
        }
        let (id, data) = self.compressor.add_dictionary(trained)?;
        Frame::Dictionary { id, data }.encode(&mut self.out, self.crc);
        Some(id)
    }

    /// A `DICTIONARY` frame from the peer: kept for its messages, or the
    /// connection fails (a dictionary not agreed, too large, one too many, or not
    /// one).
    pub(super) fn on_dictionary(&mut self, id: u32, data: &[u8]) -> Result<(), ProtoError> {
        // Agreed: the bit, and zstd itself (`agree_dictionaries`).
        if !self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.compressions.contains(&Algorithm::ZstdDict))
        {
            return Err(Self::violation(
                "DICTIONARY frame, but dictionaries were not agreed",
            ));
        }
        #[cfg(feature = "zstd")]
        return self
            .decompressor
            .add_dictionary(id, data)
            .map_err(|e| Self::violation(e.to_string()));
        #[cfg(not(feature = "zstd"))]
        {
            let _ = (id, data);
            Err(Self::violation("DICTIONARY frame, but zstd is not built"))
        }
    }

    pub(super) fn compress(&mut self, key: u64, payload: &Payload) -> (Algorithm, Bytes) {
        let (algorithm, data) = self.compress_uncounted(key, payload);
        if let Some(t) = &self.config.compression_totals {
            t.add(key, algorithm, payload.len(), data.len());
        }
        (algorithm, data)
    }

    fn compress_uncounted(&mut self, key: u64, payload: &Payload) -> (Algorithm, Bytes) {
        if let Some(pre) = self.precompressed.take()
            && pre.key == key
            && pre.input_len == payload.len()
            && pre.content_type == payload.content_type
        {
            self.compressor.selector_mut().observe(
                key,
                pre.content_type,
                pre.choice,
                pre.input_len,
                pre.output_len,
                pre.cpu,
            );
            return (pre.algorithm, pre.data);
        }
        // Compression runs where the connection's frames are produced, so a huge message
        // would hold back every other call for as long as it takes: those go as they are
        // (or compressed by the caller, see `call_compression_job`).
        if payload.len() > self.config.max_compress_size {
            return (Algorithm::None, payload.bytes.clone());
        }
        let allowed = self
            .negotiated
            .as_ref()
            .map_or(&[][..], |n| &n.compressions[..]);
        self.compressor
            .encode(key, payload.content_type, &payload.bytes, allowed)
    }

    pub(super) fn compression_job(&mut self, key: u64, payload: &Payload) -> Option<CompressJob> {
        if payload.len() <= self.config.max_compress_size {
            return None; // compressed here, when it is sent
        }
        let allowed = self
            .negotiated
            .as_ref()
            .map_or(&[][..], |n| &n.compressions[..]);
        let choice = self.compressor.selector_mut().choose(
            key,
            payload.content_type,
            &payload.bytes,
            allowed,
        );
        (choice.algorithm != Algorithm::None).then(|| CompressJob {
            key,
            choice,
            content_type: payload.content_type,
            input: payload.bytes.clone(),
            clock: self.config.clock.clone(),
        })
    }

    /// For a call of `service.method` with a payload too large to compress here
    /// (over [`Config::max_compress_size`]): the compression the selector chooses, to
    /// run elsewhere and send with [`Connection::open_call_compressed`]. `None`: send
    /// it with [`Connection::open_call`] as it is.
    pub fn call_compression_job(
        &mut self,
        service: &ServiceName,
        method: &MethodName,
        payload: &Payload,
    ) -> Option<CompressJob> {
        self.compression_job(method_key(service, method), payload)
    }

    /// Like [`Connection::call_compression_job`], for the reply to the peer's call
    /// `call_id` (send with [`Connection::send_reply_compressed`]).
    pub fn reply_compression_job(
        &mut self,
        call_id: u32,
        payload: &Payload,
    ) -> Option<CompressJob> {
        let key = self.calls.get(&call_id)?.method_key;
        self.compression_job(key, payload)
    }

    /// [`Connection::open_call`] with `payload` already compressed by a
    /// [`CompressJob`] of [`Connection::call_compression_job`].
    pub fn open_call_compressed(
        &mut self,
        service: &ServiceName,
        method: &MethodName,
        payload: Payload,
        compressed: Compressed,
        meta: WireMeta,
        stream: bool,
    ) -> Result<u32, SendError> {
        self.precompressed = Some(compressed);
        let r = self.open_call(service, method, payload, meta, stream);
        self.precompressed = None;
        r
    }

    /// [`Connection::send_reply`] with `payload` already compressed by a
    /// [`CompressJob`] of [`Connection::reply_compression_job`].
    pub fn send_reply_compressed(
        &mut self,
        call_id: u32,
        payload: Payload,
        compressed: Compressed,
        stream: bool,
    ) -> Result<(), SendError> {
        self.precompressed = Some(compressed);
        let r = self.send_reply(call_id, payload, stream);
        self.precompressed = None;
        r
    }
}
