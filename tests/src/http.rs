//! Talking to the lab's envoy-like pods: their answer, and requests on an open connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use anyhow::{Context, Result, ensure};

/// What an envoy-like pod answers: `backend=POD client=IP:PORT local=IP:PORT`.
#[derive(Debug)]
pub struct Answer {
    pub backend: String,
    pub client: SocketAddr,
    pub local: SocketAddr,
}

impl Answer {
    pub fn parse(body: &str) -> Result<Self> {
        let field = |name: &str| -> Result<&str> {
            body.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .with_context(|| format!("no {name}= in {body:?}"))
        };
        Ok(Self {
            backend: field("backend")?.to_owned(),
            client: field("client")?.parse()?,
            local: field("local")?.parse()?,
        })
    }
}

/// One HTTP/1.1 request on an open keep-alive connection.
pub fn request(conn: &mut TcpStream, host: Ipv4Addr) -> Result<Answer> {
    write!(conn, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut length = None;
    loop {
        let mut line = String::new();
        ensure!(
            reader.read_line(&mut line)? > 0,
            "connection closed mid-response"
        );
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = Some(v.trim().parse::<usize>()?);
        }
    }
    let mut body = vec![0; length.context("no Content-Length")?];
    reader.read_exact(&mut body)?;
    Answer::parse(&String::from_utf8(body)?)
}
