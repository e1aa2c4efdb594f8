//! The web client's files (`web/dist/`, built by `npm run build` and
//! committed), embedded in the binary and served at `/` and `/assets/…`,
//! with the security headers the page relies on.
//!
//! The page is an SPA whose scripts and styles are all hashed files under
//! `/assets/`, so the Content-Security-Policy allows only the page's own
//! scripts, styles and websocket: an injected `<script>` or inline handler
//! cannot run, and the page cannot talk to another host. Hashed assets are
//! cached for a year; `index.html` is revalidated by its ETag.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/dist/"]
struct Dist;

/// The policy for the page. `connect-src 'self'` covers `ws:`/`wss:` to the
/// page's own host (CSP level 3), which is the only connection it makes.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Headers every response carries: no MIME sniffing, no referrer leaks
/// (room ids are in the page's state, never in URLs, but be safe).
pub fn default_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "no-referrer"))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/index.html", web::get().to(index))
        .route("/assets/{file}", web::get().to(asset));
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

async fn index(req: HttpRequest) -> HttpResponse {
    let Some(file) = Dist::get("index.html") else {
        return HttpResponse::NotFound().body("the web client was not built into this binary\n");
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut resp = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, etag));
    if fresh {
        return resp.finish();
    }
    resp.content_type(content_type("index.html"))
        .body(file.data.into_owned())
}

async fn asset(path: web::Path<String>) -> HttpResponse {
    let name = path.into_inner();
    // Only flat names: `{file}` cannot hold a '/', and dot-files are not ours.
    if name.starts_with('.') {
        return HttpResponse::NotFound().finish();
    }
    match Dist::get(&format!("assets/{name}")) {
        Some(file) => HttpResponse::Ok()
            .content_type(content_type(&name))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)))
            .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
            .body(file.data.into_owned()),
        None => HttpResponse::NotFound().body("no such file\n"),
    }
}
