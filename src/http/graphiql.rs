//! GraphiQL at `/graphiql`, from files compiled into the binary: `graphiql/dist`, which
//! `graphiql/build.mjs` builds from pinned packages. No request of the page leaves the
//! gateway's origin, and its Content-Security-Policy allows no other.
//!
//! The page is a small HTML document; its settings (the endpoint, the example document of
//! `graphiql/example.graphql` and, on the first start for a loopback `Host`, the key made then,
//! for the Headers pane) sit in a JSON block that its script reads. The script and the style
//! sheet are served under names that carry their content hash, cached for a year, compressed
//! with brotli or gzip as the browser accepts (both compressed when they were built).

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where the assets are served.
const ASSETS: &str = "/graphiql/assets/";

/// The Content-Security-Policy of the page: its own origin only. Styles may be inline because
/// the editor sets them on its elements as it lays text out; scripts may not.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One built file in its three encodings.
struct Asset {
    /// Its name with its content hash, as the page links it.
    name: String,
    content_type: &'static str,
    plain: &'static [u8],
    brotli: &'static [u8],
    gzip: &'static [u8],
}

impl Asset {
    fn new(stem: &str, extension: &str, content_type: &'static str, encodings: [&'static [u8]; 3]) -> Self {
        let [plain, brotli, gzip] = encodings;
        let hash: String = Sha256::digest(plain)[..8].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            name: format!("{stem}.{hash}.{extension}"),
            content_type,
            plain,
            brotli,
            gzip,
        }
    }
}

/// GraphiQL's page and assets.
pub struct Graphiql {
    script: Asset,
    style: Asset,
    /// The page with the key made on this start, for loopback hosts only.
    with_key: Option<String>,
    without_key: String,
}

impl Graphiql {
    /// The page and its assets; `key` is the key made on this start, if one was.
    pub fn new(key: Option<&str>) -> Self {
        let script = Asset::new(
            "graphiql",
            "js",
            "text/javascript; charset=utf-8",
            [
                include_bytes!("../../graphiql/dist/graphiql.js"),
                include_bytes!("../../graphiql/dist/graphiql.js.br"),
                include_bytes!("../../graphiql/dist/graphiql.js.gz"),
            ],
        );
        let style = Asset::new(
            "graphiql",
            "css",
            "text/css; charset=utf-8",
            [
                include_bytes!("../../graphiql/dist/graphiql.css"),
                include_bytes!("../../graphiql/dist/graphiql.css.br"),
                include_bytes!("../../graphiql/dist/graphiql.css.gz"),
            ],
        );
        let page = |key: Option<&str>| page(&script, &style, key);
        Graphiql {
            with_key: key.map(|key| page(Some(key))),
            without_key: page(None),
            script,
            style,
        }
    }

    /// The page for a request with `host`: with the key made on this start only when the host
    /// is a loopback name or address, so that a page of another site whose name points at
    /// 127.0.0.1 (DNS rebinding) gets none.
    pub fn page(&self, host: Option<&str>) -> Response {
        let page = match &self.with_key {
            Some(page) if host.is_some_and(is_loopback_host) => page,
            _ => &self.without_key,
        };
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, POLICY),
                (header::CACHE_CONTROL, "no-store"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            page.clone(),
        )
            .into_response()
    }

    /// The asset `name`, in the encoding `headers` accept best.
    pub fn asset(&self, Path(name): Path<String>, headers: &HeaderMap) -> Response {
        let Some(asset) = [&self.script, &self.style].into_iter().find(|asset| asset.name == name) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let accepted = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let (encoding, body) = if accepts(accepted, "br") {
            (Some("br"), asset.brotli)
        } else if accepts(accepted, "gzip") {
            (Some("gzip"), asset.gzip)
        } else {
            (None, asset.plain)
        };
        let mut response = (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::VARY, "accept-encoding"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response();
        if let Some(encoding) = encoding {
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        response
    }
}

/// The HTML page linking `script` and `style`, with the Headers pane holding `key` if given,
/// or else a line on how to make one.
fn page(script: &Asset, style: &Asset, key: Option<&str>) -> String {
    let headers = key.map(|key| json!({ "X-API-Key": key }).to_string());
    let settings = json!({
        "endpoint": "/graphql",
        "example": include_str!("../../graphiql/example.graphql"),
        "headers": headers,
    });
    // Inside a script element, `<` could close it: JSON lets it be written as \u003c.
    let settings = settings.to_string().replace('<', "\\u003c");
    let hint = match key {
        Some(_) => String::new(),
        None => "<p id=\"hint\">Requests need a key: make one with <code>profile-gateway apikey create \
                 --tenant default --scope admin</code> and put <code>{\"X-API-Key\": \"pgw_…\"}</code> \
                 in the Headers pane below.</p>"
            .to_owned(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>profile-gateway · GraphiQL</title>\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <link rel=\"stylesheet\" href=\"{ASSETS}{style}\">\n\
         <script type=\"application/json\" id=\"settings\">{settings}</script>\n\
         <script type=\"module\" src=\"{ASSETS}{script}\"></script>\n\
         </head>\n<body>\n{hint}<div id=\"graphiql\"></div>\n</body>\n</html>\n",
        style = style.name,
        script = script.name,
    )
}

/// Whether an `Accept-Encoding` value accepts `coding` (named, and not with `q=0`).
fn accepts(accepted: &str, coding: &str) -> bool {
    accepted.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        parts.next().is_some_and(|name| name.eq_ignore_ascii_case(coding))
            && parts.all(|parameter| {
                parameter
                    .strip_prefix("q=")
                    .is_none_or(|q| q.parse::<f32>().is_ok_and(|q| q > 0.0))
            })
    })
}

/// Whether `host` (a `Host` header: a name or address, and maybe a port) names this machine's
/// loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoding_is_accepted_when_named_without_q_zero() {
        assert!(accepts("gzip, deflate, br, zstd", "br"));
        assert!(accepts("br;q=0.5", "br"));
        assert!(!accepts("br;q=0", "br"));
        assert!(!accepts("gzip", "br"));
        assert!(!accepts("", "gzip"));
    }

    #[test]
    fn the_page_links_hashed_assets_and_hides_no_script_in_its_settings() {
        let graphiql = Graphiql::new(Some("pgw_k</script><script>alert(1)"));
        let page = graphiql.with_key.as_deref().unwrap();
        assert!(page.contains(&format!("{ASSETS}{}", graphiql.script.name)), "{page}");
        assert!(graphiql.script.name.starts_with("graphiql.") && graphiql.script.name.ends_with(".js"));
        assert_eq!(page.matches("</script>").count(), 2, "{page}");
        assert!(!graphiql.without_key.contains("pgw_k") && graphiql.without_key.contains("apikey create"));
    }

    #[test]
    fn only_loopback_names_and_addresses_are_loopback_hosts() {
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example.com",
            "evil.example.com:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:80",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
