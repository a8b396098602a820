//! The HTTP side: routes, headers, login and actions. A few worker threads share one tiny_http server so
//! that a slow login (Argon2 is slow on purpose) does not hold up the page.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tiny_http::{Header, Method, Request, Response};

use crate::power::shutdown::Cmd;
use crate::status::api::{self, Identity};
use crate::status::auth::{self, Sessions};
use crate::status::page::{self, Access};
use crate::status::Shared;

/// What the server needs; built once by the supervisor.
pub struct Site {
    pub identity: Identity,
    pub refresh_seconds: u64,
    pub password_hash: Option<String>,
    /// Units the "restart" action may name.
    pub units: Vec<String>,
    pub restart: Option<Cmd>,
    pub reboot: Option<Cmd>,
    pub shared: Shared,
    pub sessions: Sessions,
    pub started: Instant,
    /// The anonymous page, rendered once per data generation: most requests are phones reloading it.
    pub page_cache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

const WORKERS: usize = 4;
const MAX_FORM: u64 = 4096;

type Reply = Response<std::io::Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> Header {
    // Only called with constant names and values we build ourselves.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| {
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("constant header")
    })
}

fn body(content_type: &str, data: Vec<u8>) -> Reply {
    Response::from_data(data)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
}

fn redirect(to: &str) -> Reply {
    Response::from_data(Vec::new())
        .with_status_code(303)
        .with_header(header("Location", to))
}

/// Serves until the process ends; calls `ready` once the socket is bound.
pub fn serve(listen: std::net::SocketAddr, site: Arc<Site>, ready: impl FnOnce()) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    // tiny_http writes the head and the body in separate small writes; with Nagle's algorithm a kept-alive
    // client's delayed ACK then stalls each reply by 40 ms. Accepted sockets inherit this option.
    nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true)
        .context("cannot set TCP_NODELAY")?;
    let server = Arc::new(
        tiny_http::Server::from_listener(listener, None)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot serve on {listen}"))?,
    );
    ready();
    let mut workers = Vec::new();
    for _ in 1..WORKERS {
        let (server, site) = (server.clone(), site.clone());
        workers.push(std::thread::spawn(move || work(&server, &site)));
    }
    work(&server, &site);
    Ok(())
}

fn work(server: &tiny_http::Server, site: &Site) {
    for request in server.incoming_requests() {
        handle(request, site);
    }
}

fn get_header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn handle(mut request: Request, site: &Site) {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let reply = match (request.method(), path) {
        (Method::Get | Method::Head, "/status" | "/status/") => {
            page_reply(&request, site, query.contains("login=failed"))
        }
        (Method::Get | Method::Head, "/api/status") => {
            let snap = snapshot(site);
            match serde_json::to_vec_pretty(&snap) {
                Ok(json) => body("application/json", json),
                Err(e) => body("text/plain", format!("cannot encode: {e}\n").into_bytes())
                    .with_status_code(500),
            }
        }
        (Method::Get | Method::Head, "/metrics") => body(
            "text/plain; version=0.0.4",
            crate::status::metrics::render(&snapshot(site)).into_bytes(),
        ),
        (Method::Get, "/") => redirect("/status"),
        (Method::Post, "/status/login") => login(&mut request, site),
        (Method::Post, "/status/action") => action(&mut request, site),
        _ => body("text/plain", b"not found\n".to_vec()).with_status_code(404),
    };
    // A client that went away is not the server's problem.
    let _ = request.respond(reply);
}

fn snapshot(site: &Site) -> api::Snapshot {
    let live = site.shared.read();
    api::snapshot(&site.identity, &live, site.started.elapsed().as_secs())
}

fn session_csrf(request: &Request, site: &Site) -> Option<String> {
    let token = get_header(request, "Cookie").and_then(auth::cookie_token)?;
    site.sessions.csrf_for(token)
}

fn page_reply(request: &Request, site: &Site, failed: bool) -> Reply {
    let csrf = session_csrf(request, site);
    let anonymous = csrf.is_none() && !failed;
    let generation = site.shared.generation();
    let cached = site.page_cache.lock().ok().and_then(|c| {
        c.as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, p)| p.clone())
    });
    let html: Vec<u8> = match cached.filter(|_| anonymous) {
        Some(page) => page.as_ref().clone(),
        None => {
            let snap = snapshot(site);
            let access = match (&site.password_hash, &csrf) {
                (None, _) => Access::ReadOnly,
                (Some(_), Some(csrf)) => Access::Technician {
                    csrf,
                    units: &site.units,
                },
                (Some(_), None) => Access::LoggedOut { failed },
            };
            let html = page::render(&snap, site.refresh_seconds, access).into_bytes();
            if anonymous {
                if let Ok(mut c) = site.page_cache.lock() {
                    *c = Some((generation, Arc::new(html.clone())));
                }
            }
            html
        }
    };
    body("text/html; charset=utf-8", html)
        .with_header(header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
        ))
        .with_header(header("X-Frame-Options", "DENY"))
}

fn read_form(request: &mut Request) -> Vec<(String, String)> {
    let mut text = String::new();
    let _ = request.as_reader().take(MAX_FORM).read_to_string(&mut text);
    parse_form(&text)
}

/// `application/x-www-form-urlencoded`.
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn forbidden(why: &str) -> Reply {
    body("text/plain", format!("forbidden: {why}\n").into_bytes()).with_status_code(403)
}

fn cross_site(request: &Request) -> bool {
    !auth::same_origin(get_header(request, "Origin"), get_header(request, "Host"))
}

fn login(request: &mut Request, site: &Site) -> Reply {
    let Some(hash) = &site.password_hash else {
        return forbidden("no technician password is configured");
    };
    if cross_site(request) {
        return forbidden("cross-site request");
    }
    let form = read_form(request);
    let password = field(&form, "password").unwrap_or("");
    if !auth::verify(hash, password) {
        eprintln!("status: failed technician login");
        // Slows guessing down; other workers keep serving the page.
        std::thread::sleep(Duration::from_secs(1));
        return redirect("/status?login=failed");
    }
    match site.sessions.open() {
        Ok((token, _)) => redirect("/status").with_header(header(
            "Set-Cookie",
            &format!(
                "{}={token}; Path=/status; HttpOnly; SameSite=Strict; Max-Age={}",
                auth::COOKIE,
                auth::SESSION_TTL.as_secs()
            ),
        )),
        Err(e) => body("text/plain", format!("{e:#}\n").into_bytes()).with_status_code(500),
    }
}

fn action(request: &mut Request, site: &Site) -> Reply {
    if cross_site(request) {
        return forbidden("cross-site request");
    }
    let token = get_header(request, "Cookie")
        .and_then(auth::cookie_token)
        .map(str::to_owned);
    let Some(expected) = token.as_deref().and_then(|t| site.sessions.csrf_for(t)) else {
        return forbidden("log in first");
    };
    let form = read_form(request);
    if !auth::same(field(&form, "csrf").unwrap_or(""), &expected) {
        return forbidden("stale or missing form token; reload the page");
    }
    let what = field(&form, "action").unwrap_or("");
    eprintln!("status: technician action '{what}'");
    match what {
        "sync-now" => site.shared.request_sync_now(),
        "logout" => {
            if let Some(t) = &token {
                site.sessions.close(t);
            }
        }
        "reboot" => {
            if let Some(cmd) = site.reboot.clone() {
                std::thread::spawn(move || {
                    if let Err(e) = cmd.run(Duration::from_secs(60)) {
                        eprintln!("status: reboot: {e:#}");
                    }
                });
            }
        }
        other => match other.strip_prefix("restart:") {
            Some(unit) if site.units.iter().any(|u| u == unit) => {
                if let Some(restart) = site.restart.clone() {
                    let unit = unit.to_owned();
                    std::thread::spawn(move || {
                        if let Err(e) = crate::health::probes::restart_unit(
                            &restart,
                            &unit,
                            Duration::from_secs(90),
                        ) {
                            eprintln!("status: restart {unit}: {e:#}");
                        }
                    });
                }
            }
            _ => return body("text/plain", b"unknown action\n".to_vec()).with_status_code(400),
        },
    }
    redirect("/status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form("password=a+b%21%zz&x=&csrf=12");
        assert_eq!(field(&f, "password"), Some("a b!%zz"));
        assert_eq!(field(&f, "x"), Some(""));
        assert_eq!(field(&f, "csrf"), Some("12"));
        assert_eq!(parse_form("a=%4"), vec![("a".to_owned(), "%4".to_owned())]);
    }
}
