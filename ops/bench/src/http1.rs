//! The load generator's HTTP client: one keep-alive HTTP/1.1 connection that sends a POST and
//! reads its response, one request at a time. The load generator shares the machine's two
//! cores with the pipeline it measures, and reqwest's pool, header maps and a task per request
//! cost it about 60 µs of CPU per open-loop request, a sixth of the machine at the 50 % load;
//! this writes one prepared buffer and reads one response.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Responses larger than this are refused (the edge's push answers are a few hundred bytes).
const MAX_RESPONSE: usize = 1 << 20;

pub struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(1024),
        })
    }

    /// POSTs `body` (JSON) to `path` with the given headers (`name: value` each, no line
    /// ends) and returns the response's status.
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
        self.stream.write_all(&self.request).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> anyhow::Result<u16> {
        self.response.clear();
        let (head_len, status, body_len) = loop {
            if let Some(head) = parse_head(&self.response)? {
                break head;
            }
            self.fill().await?;
        };
        while self.response.len() < head_len + body_len {
            self.fill().await?;
        }
        if self.response.len() > head_len + body_len {
            bail!("bytes after the response (nothing was pipelined)");
        }
        Ok(status)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.response.len() >= MAX_RESPONSE {
            bail!("response over {MAX_RESPONSE} bytes");
        }
        self.response.reserve(4096);
        if self.stream.read_buf(&mut self.response).await? == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }
}

/// The response head in `buf`, once complete: its length, the status, and the body's length
/// (`Content-Length`; the edge's answers always carry one).
fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(usize, u16, usize)>> {
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
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            body_len = Some(value.trim().parse().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a response without Content-Length: {head:?}");
        }
    }
    let body_len = body_len.with_context(|| format!("no Content-Length in {head:?}"))?;
    Ok(Some((end + 4, status, body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_complete_with_its_status_and_body_length() {
        let full = b"HTTP/1.1 202 Accepted\r\ncontent-length: 12\r\nx: y\r\n\r\n{\"a\":\"bcd\"}";
        assert_eq!(parse_head(&full[..20]).unwrap(), None);
        assert_eq!(parse_head(full).unwrap(), Some((51, 202, 12)));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn a_post_reads_the_status_of_a_real_server_and_the_connection_is_kept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for status in ["201 Created", "409 Conflict"] {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\n{{}}");
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        let mut connection = Connection::open(addr).await.unwrap();
        let first = connection.post("/p", &["A: 1"], "{\"n\":1}").await.unwrap();
        let second = connection.post("/p", &["A: 2"], "{}").await.unwrap();
        assert_eq!((first, second), (201, 409));
        let seen = server.await.unwrap();
        assert_eq!(
            seen[0],
            "POST /p HTTP/1.1\r\nHost: bench\r\nA: 1\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"n\":1}"
        );
        assert!(seen[1].starts_with("POST /p HTTP/1.1\r\nHost: bench\r\nA: 2\r\n"));
    }
}
