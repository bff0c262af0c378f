//! The people-facing pages: the live dashboard at `GET /` and the browser client at
//! `GET /client.js`, both compiled into the binary from `assets/` (no build step, no
//! external resources). The dashboard's data comes from the `$sys/stats` topic over the
//! WebSocket, not from here.

use super::response;
use crate::server::http::HttpResponse;
use bytes::Bytes;
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL};

const DASHBOARD_HTML: &str = include_str!("assets/dashboard.html");
const CLIENT_JS: &str = include_str!("assets/client.js");
/// Where the page learns the WebSocket path (`server.ws_path` may differ from `/ws`).
const WS_PATH_SLOT: &str = "{{WS_PATH}}";

/// `GET /`: the dashboard, with the configured WebSocket path filled in.
pub fn index(ws_path: &str) -> HttpResponse {
    let page = DASHBOARD_HTML.replace(WS_PATH_SLOT, &escape_attribute(ws_path));
    revalidated(response(200, "text/html; charset=utf-8", Bytes::from(page)))
}

/// `GET /client.js`: the ES module client (docs/CLIENT.md).
pub fn client_js() -> HttpResponse {
    let mut resp = revalidated(response(
        200,
        "text/javascript; charset=utf-8",
        Bytes::from_static(CLIENT_JS.as_bytes()),
    ));
    // Pages on other origins may import the module (a cross-origin module script needs
    // CORS); whether they may then connect is `server.allowed_origins`' decision.
    resp.headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
}

// A browser must not keep an old page or client across a broker upgrade.
fn revalidated(mut resp: HttpResponse) -> HttpResponse {
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn escape_attribute(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_gets_the_ws_path_once_and_escaped() {
        assert_eq!(DASHBOARD_HTML.matches(WS_PATH_SLOT).count(), 1);
        assert_eq!(escape_attribute(r#"/a"b<&>"#), "/a&quot;b&lt;&amp;&gt;");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for page in [DASHBOARD_HTML, CLIENT_JS] {
            for outside in [
                "src=\"http",
                "href=\"http",
                "from \"http",
                "url(",
                "@import",
                "//cdn",
            ] {
                assert!(!page.contains(outside), "external resource: {outside}");
            }
        }
        assert!(DASHBOARD_HTML.contains(r#"from "/client.js""#));
    }
}
