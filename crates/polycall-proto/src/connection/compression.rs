//! Compression of outgoing messages: inline for small ones, as a job another thread
//! runs for large ones.

use super::*;

impl Connection {
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
