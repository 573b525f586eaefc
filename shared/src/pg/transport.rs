//! How a connection reaches PostgreSQL: a TCP socket of our own (keepalives, a user timeout),
//! TLS on it when configured, and a wrapper ([`Guarded`]) over the stream the protocol runs on
//! (the TLS session, or the socket itself) that keeps two promises tokio-postgres cannot:
//!
//! - **No password in the clear or as MD5.** Until the server says `AuthenticationOk`, the
//!   wrapper reads every authentication request before tokio-postgres does; one for a
//!   cleartext password (code 3) or an MD5 hash (code 5) fails the connection before a byte of
//!   the password is written. Only SCRAM-SHA-256 (which never reveals the password) goes on.
//!   A server registered at an attacker's address, or one reconfigured behind our back,
//!   therefore never receives a password. (tokio-postgres's `channel_binding=require` would
//!   refuse them too, but only over TLS, and it also refuses SCRAM without channel binding,
//!   which poolers and proxies commonly offer.)
//! - **A synchronous close.** PostgreSQL keeps a backend's socket open until the process has
//!   exited, "so that clients can perform a synchronous close" (`pqcomm.c`). Closing, the
//!   wrapper shuts its write side and reads until the server's end of file, so a connection
//!   whose close has finished no longer holds a backend: a server's budget of connections is
//!   counted by what exists on the server, not by what we think we hold. The wait is bounded
//!   ([`CLOSE_WAIT`]); a server that never answers is left to the socket's timeouts.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use postgres_native_tls::{MakeTlsConnector, TlsConnector, TlsStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// The longest a close waits for the server to end the session.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Why the wrapper refused an authentication request. It reaches the caller as the source of
/// tokio-postgres's I/O error (see [`insecure_auth`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "the server asked for the password {0}; refused (only SCRAM-SHA-256 authentication is used)"
)]
pub(crate) struct InsecureAuth(&'static str);

/// The refusal behind a connection error, if that is what it was.
pub(crate) fn insecure_auth(e: &tokio_postgres::Error) -> Option<&InsecureAuth> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if let Some(refused) = io.get_ref().and_then(|r| r.downcast_ref::<InsecureAuth>()) {
                return Some(refused);
            }
        }
        source = s.source();
    }
    None
}

/// Opens a TCP connection to `host:port` (each address the name resolves to, in turn, each
/// within its share of `limit`, so that one address that never answers leaves time for the
/// next), with TCP keepalives (after 10 s idle, every 5 s, 3 probes) and a 15 s user timeout,
/// so that a network black hole ends even a long statement's wait. The caller bounds the
/// whole connect.
pub(crate) async fn connect_tcp(host: &str, port: u16, limit: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolved to nothing");
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let share = (limit / addrs.len().max(1) as u32).max(Duration::from_millis(500));
    for addr in addrs {
        let attempt = match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(attempt) => attempt,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")),
        };
        match attempt {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                let socket = socket2::SockRef::from(&stream);
                socket.set_tcp_keepalive(
                    &socket2::TcpKeepalive::new()
                        .with_time(Duration::from_secs(10))
                        .with_interval(Duration::from_secs(5))
                        .with_retries(3),
                )?;
                #[cfg(target_os = "linux")]
                socket.set_tcp_user_timeout(Some(Duration::from_secs(15)))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Where the wrapper is in the server's messages before authentication ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Reading a message's header: its type, length and (for an authentication request) its
    /// code; `have` bytes of it so far.
    Header { bytes: [u8; 9], have: usize },
    /// Skipping the rest of a message.
    Skip(u32),
    /// Authentication is over: everything passes.
    Done,
}

/// A stream with an authentication guard and a synchronous close (see the module
/// documentation).
pub(crate) struct Guarded<S> {
    inner: S,
    scan: Scan,
    /// Set once our side is shut: reading until the server's end of file, until `deadline`.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Guarded<S> {
    pub(crate) fn new(inner: S) -> Guarded<S> {
        Guarded {
            inner,
            scan: Scan::Header {
                bytes: [0; 9],
                have: 0,
            },
            closing: None,
        }
    }

    /// Looks at bytes the server sent, in order. An error when one is a request for the
    /// password in the clear or as MD5.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), InsecureAuth> {
        while !bytes.is_empty() {
            match &mut self.scan {
                Scan::Done => return Ok(()),
                Scan::Skip(left) => {
                    let n = (*left as usize).min(bytes.len());
                    bytes = &bytes[n..];
                    *left -= n as u32;
                    if *left == 0 {
                        self.scan = Scan::Header {
                            bytes: [0; 9],
                            have: 0,
                        };
                    }
                }
                Scan::Header {
                    bytes: header,
                    have,
                } => {
                    // An authentication request ('R') is read up to its code; any other
                    // message up to its length.
                    let wanted = if *have >= 1 && header[0] == b'R' {
                        9
                    } else {
                        5
                    };
                    let n = (wanted - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    // The type byte may have just arrived: an 'R' wants its code too.
                    let wanted = if header[0] == b'R' { 9 } else { 5 };
                    if *have < wanted {
                        continue;
                    }
                    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    let body = length.saturating_sub(4);
                    if header[0] != b'R' {
                        self.scan = if body == 0 {
                            Scan::Header {
                                bytes: [0; 9],
                                have: 0,
                            }
                        } else {
                            Scan::Skip(body)
                        };
                        continue;
                    }
                    if length < 8 {
                        // Not a message tokio-postgres will accept either: it says so.
                        self.scan = Scan::Done;
                        return Ok(());
                    }
                    let code = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                    match code {
                        0 => {
                            self.scan = Scan::Done;
                            return Ok(());
                        }
                        3 => return Err(InsecureAuth("in cleartext")),
                        5 => return Err(InsecureAuth("as an MD5 hash")),
                        _ => {
                            self.scan = match body - 4 {
                                0 => Scan::Header {
                                    bytes: [0; 9],
                                    have: 0,
                                },
                                rest => Scan::Skip(rest),
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if self.scan != Scan::Done {
            let this = &mut *self;
            if let Err(refused) = this.inspect(&buf.filled()[before..]) {
                // Never handed over: tokio-postgres fails without answering the request.
                buf.set_filled(before);
                this.scan = Scan::Done;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    refused,
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Shuts our side, then reads (and drops) whatever comes until the server's end of file:
    /// the backend has exited then. At most [`CLOSE_WAIT`].
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_none() {
            // A write side that cannot be shut is a connection that is gone already.
            if ready!(Pin::new(&mut this.inner).poll_shutdown(cx)).is_err() {
                return Poll::Ready(Ok(()));
            }
            this.closing = Some(Box::pin(tokio::time::sleep(CLOSE_WAIT)));
        }
        let mut scratch = [0u8; 256];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                // Reset, or a TLS session ended without its close_notify: gone too.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        match this.closing.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}

impl<S: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream for Guarded<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// TLS (native-tls, as `postgres-native-tls` does it) with the guard over the session.
pub(crate) struct GuardedTls(TlsConnector);

impl GuardedTls {
    pub(crate) fn new(
        make: &MakeTlsConnector,
        host: &str,
    ) -> Result<GuardedTls, native_tls::Error> {
        let mut make = make.clone();
        Ok(GuardedTls(MakeTlsConnect::<TcpStream>::make_tls_connect(
            &mut make, host,
        )?))
    }
}

impl TlsConnect<TcpStream> for GuardedTls {
    type Stream = Guarded<TlsStream<TcpStream>>;
    type Error = native_tls::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, native_tls::Error>> + Send>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        let handshake = self.0.connect(stream);
        Box::pin(async move { Ok(Guarded::new(handshake.await?)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn auth(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        message(b'R', &body)
    }

    /// What a client reading through the guard gets of `server`'s bytes, delivered in pieces
    /// of `chunk` bytes.
    fn scan(server: &[u8], chunk: usize) -> Result<usize, InsecureAuth> {
        let mut g = Guarded::new(());
        let mut passed = 0;
        for piece in server.chunks(chunk) {
            g.inspect(piece)?;
            passed += piece.len();
        }
        Ok(passed)
    }

    #[test]
    fn cleartext_and_md5_requests_are_refused_however_the_bytes_arrive() {
        let sasl = auth(10, b"SCRAM-SHA-256\0\0");
        for chunk in [1, 2, 3, 7, 1000] {
            assert!(scan(&auth(3, b""), chunk).is_err(), "cleartext, {chunk}");
            assert!(scan(&auth(5, b"salt"), chunk).is_err(), "md5, {chunk}");
            // A notice first, then the request.
            let noticed = [message(b'N', b"Sfoo\0\0"), auth(5, b"salt")].concat();
            assert!(
                scan(&noticed, chunk).is_err(),
                "md5 after a notice, {chunk}"
            );
            // SCRAM, its continuations, then OK, then anything at all.
            let scram = [
                sasl.clone(),
                auth(11, b"r=abc,s=def,i=4096"),
                auth(12, b"v=xyz"),
                auth(0, b""),
                auth(3, b""), // after authentication: not a request any more
                message(b'S', b"a\0b\0"),
            ]
            .concat();
            assert_eq!(scan(&scram, chunk).ok(), Some(scram.len()), "{chunk}");
            // Trust (no request at all) and an error pass too.
            assert!(scan(&auth(0, b""), chunk).is_ok());
            assert!(scan(&message(b'E', b"SFATAL\0\0"), chunk).is_ok());
        }
    }

    #[tokio::test]
    async fn a_password_never_reaches_a_server_that_asks_for_it_in_cleartext() {
        for code in [3u32, 5] {
            let (client, mut server) = tokio::io::duplex(4096);
            let serve = tokio::spawn(async move {
                // The startup message, then the request; then whatever the client sends.
                let mut len = [0u8; 4];
                server.read_exact(&mut len).await.unwrap();
                let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                server.read_exact(&mut rest).await.unwrap();
                let salt = if code == 5 { &b"salt"[..] } else { b"" };
                server.write_all(&auth(code, salt)).await.unwrap();
                let mut after = Vec::new();
                let _ = server.read_to_end(&mut after).await;
                after
            });
            let mut cfg = tokio_postgres::Config::new();
            cfg.user("u")
                .password("hunter2")
                .dbname("d")
                .ssl_mode(tokio_postgres::config::SslMode::Disable);
            let e = cfg
                .connect_raw(Guarded::new(client), tokio_postgres::NoTls)
                .await
                .err()
                .expect("refused");
            assert!(insecure_auth(&e).is_some(), "{e}");
            let after = serve.await.unwrap();
            assert!(
                !after.contains(&b'p'),
                "no password message reached the server: {after:?}"
            );
            assert!(!String::from_utf8_lossy(&after).contains("hunter2"));
        }
    }
}
