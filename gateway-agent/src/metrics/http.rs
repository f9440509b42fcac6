//! The HTTP endpoint: `GET /metrics` answers the Prometheus text format; anything else is a
//! 404 (or a 405 for another method on `/metrics`). Each scrape reads the maps on a blocking
//! thread, so the agent's run loop (signals, reloads, gratuitous ARP) never waits for one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE as PROMETHEUS_TEXT;
use tokio::net::TcpListener;

use super::Exporter;

/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub const PATH: &str = "/metrics";

/// Binds `address` now, so that a port already taken fails the start, before anything is
/// loaded.
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("--metrics-address {address}: cannot listen"))
}

/// Answers scrapes on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: try again shortly rather than spin.
                warn!("metrics endpoint: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, exporter.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!("metrics endpoint: connection from {peer}: {e}");
            }
        });
    }
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    exporter: Arc<Exporter>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.uri().path() != PATH {
        return Ok(response(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("the metrics are at {PATH}\n"),
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, String::new());
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let scraped = tokio::task::spawn_blocking(move || exporter.scrape()).await;
    Ok(match scraped {
        Ok(Ok(text)) => response(StatusCode::OK, PROMETHEUS_TEXT, text),
        Ok(Err(e)) => {
            warn!("metrics endpoint: {e:#}");
            response(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e:#}\n"))
        }
        Err(e) => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("scrape failed: {e}\n"),
        ),
    })
}
