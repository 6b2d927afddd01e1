//! The handshake and authentication: HELLO/WELCOME, then the AUTH steps until the
//! session is open.

use super::*;

impl Connection {
    pub(super) fn handle_handshake(&mut self, frame: Frame) -> Result<(), ProtoError> {
        match (self.role, frame) {
            (Role::Server, Frame::Hello(hello)) => match negotiate(&self.config.settings, &hello) {
                Ok(welcome) => {
                    let n = Negotiated::for_server(&self.config.settings, &hello, &welcome);
                    Frame::Welcome(welcome).encode(&mut self.out, false);
                    if n.auth_method == AuthMethod::None {
                        self.open(n);
                    } else {
                        // The client speaks first.
                        self.start_auth(n, false);
                    }
                    Ok(())
                }
                Err(ef) => {
                    let status = ef.status();
                    Frame::Error(ef).encode(&mut self.out, false);
                    // The error frame is queued already; close without a second one.
                    self.close_calls(status.clone());
                    self.state = State::Closed;
                    self.events.push_back((
                        Event::Closed {
                            status: status.clone(),
                        },
                        0,
                    ));
                    Err(ProtoError::Handshake(status))
                }
            },
            (Role::Client, Frame::Welcome(w)) => {
                let n = Negotiated::for_client(&self.config.settings, &w)
                    .map_err(ProtoError::Handshake)?;
                let method = n.auth_method;
                if method == AuthMethod::None {
                    self.open(n);
                } else {
                    self.start_auth(n, true);
                    self.events.push_back((
                        Event::Authenticate {
                            method,
                            step: 0,
                            data: Bytes::new(),
                        },
                        0,
                    ));
                }
                Ok(())
            }
            (_, Frame::Error(e)) if e.call_id == 0 => Err(ProtoError::Remote(e.status())),
            (role, f) => Err(Self::violation(format!(
                "{:?} frame during the handshake (expected {})",
                f.frame_type(),
                if role == Role::Server {
                    "HELLO"
                } else {
                    "WELCOME"
                }
            ))),
        }
    }

    pub(super) fn open(&mut self, mut n: Negotiated) {
        self.agree_dictionaries(&mut n);
        self.crc = n.has(features::CRC32C);
        self.send_credit = n.peer_limits.initial_window.into();
        self.negotiated = Some(n);
        self.state = State::Open;
        self.events.push_back((Event::Connected, 0));
    }

    /// Enters the authentication exchange: frames after `WELCOME` already carry the
    /// CRC trailer when negotiated, but stay within the handshake's frame limit.
    pub(super) fn start_auth(&mut self, n: Negotiated, our_turn: bool) {
        self.crc = n.has(features::CRC32C);
        self.negotiated = Some(n);
        self.state = State::Auth;
        self.auth_our_turn = our_turn;
    }

    pub(super) fn auth_method(&self) -> AuthMethod {
        self.negotiated
            .as_ref()
            .map_or(AuthMethod::None, |n| n.auth_method)
    }

    pub(super) fn handle_auth(&mut self, frame: Frame) -> Result<(), ProtoError> {
        let a = match frame {
            Frame::Auth(a) => a,
            Frame::Error(e) if e.call_id == 0 => return Err(ProtoError::Remote(e.status())),
            f => {
                return Err(Self::violation(format!(
                    "{:?} frame during authentication (expected AUTH)",
                    f.frame_type()
                )));
            }
        };
        let method = self.auth_method();
        if a.method != method as u8 {
            return Err(Self::violation(format!(
                "AUTH for method {} while method {} was negotiated",
                a.method, method as u8
            )));
        }
        if self.auth_our_turn {
            return Err(Self::violation(
                "AUTH frame out of turn: this side has not answered the last step",
            ));
        }
        if self.role == Role::Client && a.step == AUTH_ACCEPTED {
            let principal = std::str::from_utf8(&a.data)
                .map_err(|_| Self::violation("the accepted principal is not UTF-8"))?;
            if principal.len() > 1024 {
                return Err(Self::violation("the accepted principal exceeds 1024 bytes"));
            }
            self.principal = (!principal.is_empty()).then(|| principal.to_owned());
            let n = self.negotiated.take().expect("negotiated before AUTH");
            self.open(n);
            return Ok(());
        }
        // Client steps are odd, server steps even, each one more than the last.
        let expected = self.auth_step + 1;
        if a.step != expected || expected > AUTH_MAX_STEPS {
            return Err(Self::violation(format!(
                "AUTH step {} where step {expected} was expected (at most {AUTH_MAX_STEPS})",
                a.step
            )));
        }
        self.auth_step = a.step;
        self.auth_our_turn = true;
        self.events.push_back((
            Event::Authenticate {
                method,
                step: a.step,
                data: a.data,
            },
            0,
        ));
        Ok(())
    }

    pub(super) fn check_auth_turn(&self) -> Result<(), SendError> {
        match self.state {
            State::Auth if self.auth_our_turn => Ok(()),
            State::Closed => Err(SendError::Closed),
            _ => Err(SendError::NotConnected),
        }
    }

    /// Sends this side's next message of the authentication exchange (after an
    /// [`Event::Authenticate`]).
    pub fn auth_continue(&mut self, data: Bytes) -> Result<(), SendError> {
        self.check_auth_turn()?;
        let step = self.auth_step + 1;
        if step > AUTH_MAX_STEPS {
            return Err(SendError::Closed);
        }
        self.auth_step = step;
        self.auth_our_turn = false;
        let method = self.auth_method() as u8;
        Frame::Auth(crate::frame::Auth { method, step, data }).encode(&mut self.out, self.crc);
        Ok(())
    }

    /// The server accepts the client as `principal` (empty: authenticated but unnamed);
    /// the connection opens ([`Event::Connected`]).
    pub fn auth_accept(&mut self, principal: &str) -> Result<(), SendError> {
        self.check_auth_turn()?;
        if self.role != Role::Server {
            return Err(SendError::NotConnected);
        }
        let method = self.auth_method() as u8;
        Frame::Auth(crate::frame::Auth {
            method,
            step: AUTH_ACCEPTED,
            data: Bytes::copy_from_slice(principal.as_bytes()),
        })
        .encode(&mut self.out, self.crc);
        self.principal = (!principal.is_empty()).then(|| principal.to_owned());
        let n = self.negotiated.take().expect("negotiated before AUTH");
        self.open(n);
        Ok(())
    }

    /// The server refuses the client: an `ERROR` frame (call id 0) with `status`
    /// (`unauthenticated`), then the connection closes.
    pub fn auth_reject(&mut self, status: &Status) -> Result<(), SendError> {
        self.check_auth_turn()?;
        Frame::Error(ErrorFrame::from_status(0, status)).encode(&mut self.out, self.crc);
        self.close_calls(status.clone());
        self.state = State::Closed;
        self.events.push_back((
            Event::Closed {
                status: status.clone(),
            },
            0,
        ));
        Ok(())
    }

    /// Who the peer authenticated as: on a server, the principal it accepted; on a
    /// client, the principal the server announced. `None` without authentication.
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }
}
