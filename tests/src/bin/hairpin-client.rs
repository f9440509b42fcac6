//! What a process on a lab node does with a VIP, told line by line: the lab's hairpin tests
//! (and the benchmark) run it inside a node's cgroup, where the agent's socket hooks apply.
//!
//! - `tcp ADDR:PORT COUNT`: COUNT connections, each `connect()`, `getpeername()`, an HTTP
//!   GET, the answer read to its end; prints `peer=IP:PORT BODY` per connection.
//! - `udp ADDR:PORT COUNT`: COUNT datagrams `sendto()` ADDR:PORT from one unconnected socket,
//!   each answer `recvfrom()`; prints `from=IP:PORT PAYLOAD` per answer.
//! - `connect-rate ADDR:PORT SECONDS`: UDP `socket()`, `connect()`, `close()` for SECONDS
//!   (no packet leaves: the cost is the system calls, the hooks' included); prints
//!   `connects_per_sec=N`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(3);
/// A UDP server may still be starting: a few sends per datagram.
const UDP_TRIES: usize = 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hairpin-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [mode, addr, n] = args else {
        return Err("usage: hairpin-client tcp|udp|connect-rate ADDR:PORT COUNT|SECONDS".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let n: u64 = n.parse().map_err(|e| format!("{n}: {e}"))?;
    match mode.as_str() {
        "tcp" => (0..n).try_for_each(|_| tcp(addr)),
        "udp" => udp(addr, n),
        "connect-rate" => connect_rate(addr, Duration::from_secs(n)),
        other => Err(format!("unknown mode {other}")),
    }
}

fn tcp(addr: SocketAddr) -> Result<(), String> {
    let mut conn =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let peer = conn.peer_addr().map_err(|e| format!("getpeername: {e}"))?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(answer.as_str(), |(_, b)| b);
    println!("peer={peer} {}", body.trim());
    Ok(())
}

fn udp(addr: SocketAddr, count: u64) -> Result<(), String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(|e| e.to_string())?;
    for i in 0..count {
        let answered = (0..UDP_TRIES).find_map(|_| {
            socket.send_to(format!("query {i}").as_bytes(), addr).ok()?;
            let mut buf = [0u8; 512];
            let (len, from) = socket.recv_from(&mut buf).ok()?;
            Some((from, String::from_utf8_lossy(&buf[..len]).trim().to_owned()))
        });
        let (from, payload) = answered.ok_or_else(|| format!("no answer from {addr}"))?;
        println!("from={from} {payload}");
    }
    Ok(())
}

fn connect_rate(addr: SocketAddr, duration: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut connects = 0u64;
    while start.elapsed() < duration {
        // A batch between clock reads, so the clock costs nothing measurable.
        for _ in 0..256 {
            let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
            socket
                .connect(addr)
                .map_err(|e| format!("connect {addr}: {e}"))?;
        }
        connects += 256;
    }
    println!(
        "connects_per_sec={:.0}",
        connects as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}
