//! The web console: a small static page at `/console` for trying the hub
//! from a browser (join a group, watch members and messages, send). Owns
//! the embedded assets, their routes, content types and security headers,
//! and `GET /` redirecting there; `AETHER_CONSOLE=false` turns it all off
//! (404, as for any unknown path).
//!
//! The page and its style are read straight from `clients/js/console/`;
//! the two scripts in `src/console/assets/` (the page's script and the
//! client's browser build) are the output of `npm run embed` in
//! `clients/js`, committed so that `cargo build` needs no Node. The page holds no secret,
//! so its routes need no API key; the WebSocket it opens still does.

use http::header::{self, HeaderValue};
use http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

/// What the browser may do with a console page: its own script and style
/// only (no inline code), WebSockets to any hub, nothing framed or posted.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

const INDEX: &[u8] = include_bytes!("../clients/js/console/index.html");

/// `(path, content type, body)` of every asset.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("/console", HTML, INDEX),
    ("/console/", HTML, INDEX),
    (
        "/console/console.css",
        CSS,
        include_bytes!("../clients/js/console/console.css"),
    ),
    (
        "/console/console.js",
        JS,
        include_bytes!("console/assets/console.js"),
    ),
    (
        "/console/aether-hub-client.js",
        JS,
        include_bytes!("console/assets/aether-hub-client.js"),
    ),
];

/// `GET /console…` and `GET /`, or nothing at all when `enabled` is false.
pub fn routes(
    enabled: bool,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    // The path first, then the method: an unknown path stays a 404
    // whatever its method.
    let asset = warp::path::full()
        .and_then(move |full: warp::path::FullPath| async move {
            ASSETS
                .iter()
                .find(|(path, _, _)| enabled && *path == full.as_str())
                .map(|&(_, content_type, body)| (content_type, body))
                .ok_or_else(warp::reject::not_found)
        })
        .and(warp::get())
        .map(|(content_type, body): (&'static str, &'static [u8])| {
            let mut response = body.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            secured(response)
        });
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let root = warp::path::end()
        .and_then(move || async move {
            if enabled {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::get())
        .and(query)
        .map(|query: String| redirect(&query));
    asset.or(root).unify()
}

/// `/` → `/console`, keeping the query (`/?group=g1` opens the console
/// with that group filled in).
fn redirect(query: &str) -> Response {
    let location = if query.is_empty() {
        "/console".to_owned()
    } else {
        format!("/console?{query}")
    };
    let mut response = StatusCode::FOUND.into_response();
    // A query the client sent is visible ASCII (hyper checked it), so the
    // header is valid; fall back to the bare page should it not be.
    let location =
        HeaderValue::from_str(&location).unwrap_or_else(|_| HeaderValue::from_static("/console"));
    response.headers_mut().insert(header::LOCATION, location);
    secured(response)
}

/// The headers every console response carries.
fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
