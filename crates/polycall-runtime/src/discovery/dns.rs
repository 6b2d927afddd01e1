//! The DNS SRV registry: the runtimes are the targets of an SRV record
//! (`_polycall._tcp.example.org`), each `target:port`, resolved at every refresh — what a
//! Kubernetes headless service or Consul's DNS interface publishes.
//!
//! A small DNS client over UDP (RFC 1035 messages, RFC 2782 SRV records): one question,
//! the answers' SRV records, the targets' addresses from the additional section (A
//! records) or else from the system resolver. The server is the one named after `@`
//! (`dns:_polycall._tcp.example.org@127.0.0.1:53`) or the first `nameserver` of
//! /etc/resolv.conf.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How long a DNS answer may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// RR types.
const SRV: u16 = 33;
const A: u16 = 1;

/// An SRV name and the server to ask.
pub(crate) struct DnsSrv {
    name: String,
    server: Option<SocketAddr>,
}

impl DnsSrv {
    /// `NAME` or `NAME@IP:PORT`.
    pub(crate) fn new(name: &str, server: Option<&str>) -> Result<Self, String> {
        let name = name.trim_end_matches('.').to_owned();
        if name.is_empty() || name.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(format!("{name:?} is not a DNS name"));
        }
        let server = server
            .map(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| format!("DNS server {s:?}: {e} (an IP:PORT)"))
            })
            .transpose()?;
        Ok(Self { name, server })
    }

    /// The endpoints (`IP:PORT`) the SRV record lists now.
    pub(crate) async fn endpoints(&self) -> Result<Vec<String>, String> {
        let server = match self.server {
            Some(s) => s,
            None => system_server()?,
        };
        // Not a secret: it pairs the answer with the question (the socket is connected
        // to the server, so only it can answer).
        let id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u16);
        let query = question(id, &self.name, SRV);
        let socket = tokio::net::UdpSocket::bind(if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .await
        .map_err(|e| e.to_string())?;
        socket.connect(server).await.map_err(|e| e.to_string())?;
        socket.send(&query).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, async {
            loop {
                let n = socket.recv(&mut buf).await?;
                // Answers to other questions (a late one) are not ours.
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return Ok::<_, std::io::Error>(n);
                }
            }
        })
        .await
        .map_err(|_| format!("{server} did not answer in {TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
        let answer = parse(&buf[..n]).map_err(|e| format!("the answer of {server}: {e}"))?;
        let mut out = Vec::new();
        for (target, port) in answer.srv {
            let ip = match answer
                .a
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&target))
            {
                Some((_, ip)) => Some(std::net::IpAddr::V4(*ip)),
                None => tokio::net::lookup_host((target.as_str(), port))
                    .await
                    .ok()
                    .and_then(|mut all| {
                        let all: Vec<SocketAddr> = all.by_ref().collect();
                        all.iter()
                            .find(|a| a.is_ipv4())
                            .or(all.first())
                            .map(|a| a.ip())
                    }),
            };
            match ip {
                Some(ip) => out.push(SocketAddr::new(ip, port).to_string()),
                None => tracing::warn!("discovery: SRV target {target} does not resolve"),
            }
        }
        Ok(out)
    }
}

/// The first `nameserver` of /etc/resolv.conf.
fn system_server() -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("/etc/resolv.conf: {e}; name the server: dns:NAME@IP:PORT"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| {
            "no nameserver in /etc/resolv.conf; name the server: dns:NAME@IP:PORT".into()
        })
}

/// A query for `name` of type `qtype`, recursion desired.
fn question(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    q
}

/// What an answer says: SRV targets and ports (by priority, then weight), A records.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    srv: Vec<(String, u16)>,
    a: Vec<(String, Ipv4Addr)>,
}

/// Reads a DNS message; refuses truncated, failed or malformed ones.
fn parse(m: &[u8]) -> Result<Answer, String> {
    let u16_at = |i: usize| -> Result<u16, String> {
        m.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "cut short".to_string())
    };
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err("not an answer".into());
    }
    if flags & 0x0200 != 0 {
        return Err("truncated (the record set is too large for UDP)".into());
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Answer::default()), // NXDOMAIN: no runtime
        rcode => return Err(format!("the server failed the query (rcode {rcode})")),
    }
    let (qd, an, ns, ar) = (u16_at(4)?, u16_at(6)?, u16_at(8)?, u16_at(10)?);
    let mut at = 12;
    for _ in 0..qd {
        at = name(m, at)?.1 + 4;
    }
    let mut srv: Vec<(u16, u16, String, u16)> = Vec::new();
    let mut answer = Answer::default();
    for i in 0..(an as usize + ns as usize + ar as usize) {
        let (owner, next) = name(m, at)?;
        let (rtype, rdlen) = (u16_at(next)?, u16_at(next + 8)? as usize);
        let rdata = next + 10;
        if m.len() < rdata + rdlen {
            return Err("a record is cut short".into());
        }
        if i < an as usize && rtype == SRV {
            let (priority, weight, port) = (u16_at(rdata)?, u16_at(rdata + 2)?, u16_at(rdata + 4)?);
            let (target, _) = name(m, rdata + 6)?;
            srv.push((priority, weight, target, port));
        } else if rtype == A && rdlen == 4 {
            let b = &m[rdata..rdata + 4];
            answer
                .a
                .push((owner, Ipv4Addr::new(b[0], b[1], b[2], b[3])));
        }
        at = rdata + rdlen;
    }
    srv.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    answer.srv = srv.into_iter().map(|(_, _, t, p)| (t, p)).collect();
    Ok(answer)
}

/// The name at `at` (following compression pointers) and where the record goes on.
fn name(m: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *m.get(at).ok_or("a name is cut short")? as usize;
        if len == 0 {
            return Ok((labels.join("."), end.unwrap_or(at + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let low = *m.get(at + 1).ok_or("a name pointer is cut short")? as usize;
            end.get_or_insert(at + 2);
            at = ((len & 0x3f) << 8) | low;
            continue;
        }
        let label = m.get(at + 1..at + 1 + len).ok_or("a label is cut short")?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len;
    }
    Err("a name loops".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `question(7, "_p._tcp.t", SRV)`: two SRV records (the second's
    /// target compressed to the first's) and an A record.
    fn answer() -> Vec<u8> {
        let mut m = question(7, "_p._tcp.t", SRV);
        m[2] = 0x81;
        m[3] = 0x80;
        m[6..8].copy_from_slice(&2u16.to_be_bytes()); // answers
        m[10..12].copy_from_slice(&1u16.to_be_bytes()); // additional
        let srv = |m: &mut Vec<u8>, prio: u16, port: u16, target: &[u8]| {
            m.extend_from_slice(&[0xc0, 12]); // owner: the question's name
            m.extend_from_slice(&SRV.to_be_bytes());
            m.extend_from_slice(&1u16.to_be_bytes());
            m.extend_from_slice(&60u32.to_be_bytes());
            m.extend_from_slice(&((6 + target.len()) as u16).to_be_bytes());
            m.extend_from_slice(&prio.to_be_bytes());
            m.extend_from_slice(&0u16.to_be_bytes());
            m.extend_from_slice(&port.to_be_bytes());
            m.extend_from_slice(target);
        };
        let first_target = m.len() + 2 + 10 + 6;
        srv(&mut m, 20, 7002, b"\x02rt\x01t\x00");
        srv(&mut m, 10, 7001, &[0xc0, first_target as u8]);
        m.extend_from_slice(&[0xc0, first_target as u8]);
        m.extend_from_slice(&A.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&60u32.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&[127, 0, 0, 1]);
        m
    }

    #[test]
    fn srv_answers_are_read_in_priority_order_with_their_addresses() {
        let a = parse(&answer()).unwrap();
        assert_eq!(
            a.srv,
            [("rt.t".to_owned(), 7001), ("rt.t".to_owned(), 7002)]
        );
        assert_eq!(a.a, [("rt.t".to_owned(), Ipv4Addr::LOCALHOST)]);
    }

    #[test]
    fn malformed_answers_are_refused_not_read() {
        let full = answer();
        for cut in [3, 13, full.len() - 3] {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
        let mut looping = full.clone();
        let at = looping.len() - 16; // the A record's owner: a pointer to itself
        looping[at] = 0xc0;
        looping[at + 1] = at as u8;
        assert!(parse(&looping).is_err());
        let mut failed = full;
        failed[3] = 0x82; // SERVFAIL
        assert!(parse(&failed).unwrap_err().contains("rcode 2"));
    }
}
