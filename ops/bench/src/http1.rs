//! The load generator's HTTP client: one keep-alive HTTP/1.1 connection that sends a POST and
//! reads its response, one request at a time. The load generator shares the machine's two
//! cores with the pipeline it measures, and reqwest's pool, header maps and a task per request
//! cost it about 60 µs of CPU per open-loop request, 13 % of the machine at the 50 % load;
//! this writes one prepared buffer and reads one response.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Responses larger than this are refused (the edge's push answers are a few hundred bytes).
const MAX_RESPONSE: usize = 1 << 20;

/// A request not answered within this fails (and its connection is dropped).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Connection {
    addr: SocketAddr,
    /// None after an error or a `Connection: close`: the next request connects again.
    stream: Option<TcpStream>,
    request: Vec<u8>,
    response: Vec<u8>,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Connection {
    /// Connects now, so that a server that is not there fails the measurement before it starts.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        Ok(Connection {
            addr,
            stream: Some(connect(addr).await?),
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(1024),
        })
    }

    /// POSTs `body` (JSON) to `path` with the given headers (`name: value` each, no line
    /// ends) and returns the response's status. After an error the connection is dropped and
    /// the next request opens a new one.
    pub async fn post(&mut self, path: &str, headers: &[&str], body: &str) -> anyhow::Result<u16> {
        self.request.clear();
        self.request.extend_from_slice(b"POST ");
        self.request.extend_from_slice(path.as_bytes());
        self.request
            .extend_from_slice(b" HTTP/1.1\r\nHost: bench\r\n");
        for header in headers {
            self.request.extend_from_slice(header.as_bytes());
            self.request.extend_from_slice(b"\r\n");
        }
        self.request.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body.as_bytes());
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange()).await;
        match answered {
            Ok(Ok((status, keep))) => {
                if !keep {
                    self.stream = None;
                }
                Ok(status)
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                bail!("no response within {REQUEST_TIMEOUT:?}")
            }
        }
    }

    /// Writes the prepared request and reads the response: its status, and whether the
    /// connection stays open.
    async fn exchange(&mut self) -> anyhow::Result<(u16, bool)> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => self.stream.insert(connect(self.addr).await?),
        };
        stream.write_all(&self.request).await?;
        self.response.clear();
        let head = loop {
            if let Some(head) = parse_head(&self.response)? {
                break head;
            }
            fill(stream, &mut self.response).await?;
        };
        while self.response.len() < head.len + head.body_len {
            fill(stream, &mut self.response).await?;
        }
        if self.response.len() > head.len + head.body_len {
            bail!("bytes after the response (nothing was pipelined)");
        }
        Ok((head.status, !head.close))
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    if buf.len() >= MAX_RESPONSE {
        bail!("response over {MAX_RESPONSE} bytes");
    }
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        bail!("connection closed by the server");
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
struct Head {
    len: usize,
    status: u16,
    body_len: usize,
    /// `Connection: close`: the server closes the connection after this response.
    close: bool,
}

/// The response head in `buf`, once complete, with the body's length (`Content-Length`; the
/// edge's answers always carry one).
fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let mut body_len = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            body_len = Some(value.trim().parse().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a response without Content-Length: {head:?}");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    let body_len = body_len.with_context(|| format!("no Content-Length in {head:?}"))?;
    Ok(Some(Head {
        len: end + 4,
        status,
        body_len,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_complete_with_its_status_and_body_length() {
        let full = b"HTTP/1.1 202 Accepted\r\ncontent-length: 12\r\nx: y\r\n\r\n{\"a\":\"bcd\"}";
        assert_eq!(parse_head(&full[..20]).unwrap(), None);
        let head = Head {
            len: 51,
            status: 202,
            body_len: 12,
            close: false,
        };
        assert_eq!(parse_head(full).unwrap(), Some(head));
        let closing =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(parse_head(closing).unwrap().unwrap().close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    /// Answers one request on `socket` with `status` (and `extra` header lines); returns the
    /// request as read.
    async fn answer(socket: &mut tokio::net::TcpStream, status: &str, extra: &str) -> String {
        let mut buf = vec![0u8; 4096];
        let n = socket.read(&mut buf).await.unwrap();
        let answer = format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 2\r\n\r\n{{}}");
        socket.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn posts_read_the_status_keep_the_connection_and_reconnect_after_a_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            let mut seen = vec![answer(&mut first, "201 Created", "").await];
            seen.push(answer(&mut first, "503 Busy", "Connection: close\r\n").await);
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            seen.push(answer(&mut second, "409 Conflict", "").await);
            seen
        });
        let mut connection = Connection::open(addr).await.unwrap();
        let mut statuses = Vec::new();
        for n in 1..=3 {
            let header = format!("A: {n}");
            statuses.push(
                connection
                    .post("/p", &[&header], "{\"n\":1}")
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(statuses, [201, 503, 409]);
        let seen = server.await.unwrap();
        assert_eq!(
            seen[0],
            "POST /p HTTP/1.1\r\nHost: bench\r\nA: 1\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"n\":1}"
        );
        assert!(seen[2].starts_with("POST /p HTTP/1.1\r\nHost: bench\r\nA: 3\r\n"));
    }
}
