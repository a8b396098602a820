//! The sync engine over its real transport: `appliance hub` and the centers' agents as processes, HTTP
//! with per-center MACs, through the fault-injecting proxy; one agent runs inside `appliance supervise`
//! and reports to the status page.

use std::time::Duration;

use anyhow::{ensure, Result};
use appliance::sync::exchange::wire::{self, RequestParts, Secret};
use kituo_tests::bed::services::{
    center_config, engine_account, AgentOptions, AgentService, HubService, Proc,
};
use kituo_tests::bed::{reply, world, World};
use kituo_tests::linkem::{LinkProfile, LinkProxy};
use kituo_tests::testbed::{free_port, wait_for, Nut};
use mysql::prelude::Queryable;

const ON_MAINS: &str = "ups.status: OL\nbattery.charge: 100\nbattery.runtime: 2400\n";
const ON_BATTERY: &str = "ups.status: OB DISCHRG\nbattery.charge: 90\nbattery.runtime: 2000\n";
const TABLES: &[&str] = &[
    "forum_posts",
    "forum_discussions",
    "logstore_standard_log",
    "user",
];

fn exe() -> &'static std::path::Path {
    kituo_tests::appliance_binary()
}

/// What a center's status page says about sync, as JSON.
fn sync_status(port: u16) -> Option<serde_json::Value> {
    let body = ureq::get(&format!("http://127.0.0.1:{port}/api/status"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["sync"].clone())
}

fn logs_at(w: &World, site: usize) -> Result<usize> {
    let node = if site == 0 {
        &w.hub
    } else {
        &w.centers[site - 1]
    };
    Ok(node.dump("logstore_standard_log")?.len())
}

#[test]
fn centers_sync_over_http_through_a_cutting_link_and_report_to_the_status_page() -> Result<()> {
    let mut w = world("kituo-sync-http", 2)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe(), &w.hub, &dir)?;
    let mut proxies = Vec::new();
    let mut agents: Vec<Proc> = Vec::new();
    let status_port = free_port()?;
    // The supervised center's UPS: on mains until the end, when the battery pauses its sync.
    let nut = Nut::start(&dir.join("nut"), ON_MAINS)?;
    for c in &w.centers {
        let secret = hub.add_center(exe(), c.id)?;
        // Cuts every ~30 kB on average: most requests of a busy exchange see one.
        let proxy = LinkProxy::start(
            hub.addr,
            LinkProfile::default()
                .rate_bps(4_000_000)
                .latency(Duration::from_millis(20))
                .seed(u64::from(c.id))
                .cut_mean_bytes(30_000),
        )?;
        let password = engine_account(c, &dir)?;
        let opts = AgentOptions::new(proxy.addr(), secret);
        if c.id == 2 {
            let config = center_config(c, &dir, &opts, &password, "")?;
            agents.push(AgentService::start(exe(), &config, dir.join("agent2.log"))?.proc);
        } else {
            // The other center's agent runs inside the supervisor, as on a card.
            let status = format!(
                "[status]\nlisten = 127.0.0.1:{status_port}\nbuild_info = {}\n\
                 [health]\ninterval_seconds = 5\nweb_url =\nfpm_ping_url =\nmariadb_socket =\n\
                 hostapd_control =\npartitions = /\nrestart_command =\n\
                 [power]\nsources = nut\npoll_seconds = 1\ndebounce_seconds = 1\nrestore_seconds = 1\n\
                 history_file =\n[nut]\naddress = {}\nups = ups\n",
                dir.join("none.ini").display(),
                nut.address()
            );
            let config = center_config(c, &dir, &opts, &password, &status)?;
            let child = std::process::Command::new(kituo_tests::appliance_binary())
                .args(["supervise", "--config"])
                .arg(&config)
                .stderr(std::fs::File::create(dir.join("supervisor3.log"))?)
                .spawn()?;
            agents.push(Proc {
                child,
                log: dir.join("supervisor3.log"),
            });
        }
        proxies.push(proxy);
    }

    // Both centers and the hub reply in the same thread, in bursts, while the links cut.
    for round in 0..6u64 {
        for (i, c) in w.centers.iter().enumerate() {
            for k in 0..10u64 {
                reply(
                    c,
                    3 + i as u32,
                    &format!("c{} r{round} k{k}", c.id),
                    10_000 + round * 100 + k,
                )?;
            }
        }
        reply(
            &w.hub,
            2,
            &format!("hub r{round}"),
            10_000 + round * 100 + 50,
        )?;
        std::thread::sleep(Duration::from_millis(300));
        // Besides the random cuts: reset whatever is open now, mid-exchange or idle in the pool.
        for p in &proxies {
            p.cut_all();
        }
    }
    let converged = w.wait_converged(&TABLES[..2], Duration::from_secs(120));
    if let Err(e) = converged {
        for a in &agents {
            eprintln!("--- {}\n{}", a.log.display(), a.log_text());
        }
        eprintln!("--- hub\n{}", hub.proc.log_text());
        return Err(e);
    }
    let posts = w.hub.dump("forum_posts")?;
    ensure!(
        posts.len() == 1 + 2 * 60 + 6,
        "every post once: {} rows",
        posts.len()
    );
    // Logs go to the hub only: it has both centers' 120 post events and its own 6.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while logs_at(&w, 0)? < 126 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(logs_at(&w, 0)? == 126, "hub logs: {}", logs_at(&w, 0)?);
    ensure!(logs_at(&w, 1)? == 60, "center 2 keeps its own logs only");
    let cuts: u64 = proxies.iter().map(|p| p.stats().cuts).sum();
    ensure!(cuts >= 3, "the links were cut ({cuts} times)");

    // `sync verify` over HTTP, as a technician runs it once the link is good: every relayed table
    // identical.
    for p in &proxies {
        p.set_profile(LinkProfile::default())?;
    }
    let verify = std::process::Command::new(kituo_tests::appliance_binary())
        .args(["sync", "verify", "--config"])
        .arg(dir.join("site2-appliance.ini"))
        .output()?;
    let said = String::from_utf8_lossy(&verify.stdout);
    ensure!(
        verify.status.success() && said.contains(": identical"),
        "verify: {said}{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Acknowledged changes leave the center's outbox; the hub drops what both centers have pulled.
    let outbox: u64 = w.centers[0]
        .sql()?
        .query_first("SELECT COUNT(*) FROM kituo_sync.log")?
        .unwrap_or(u64::MAX);
    ensure!(
        outbox == 0,
        "center 2's outbox still holds {outbox} changes"
    );
    let logged = |w: &mut World| -> Result<u64> {
        Ok(w.hub
            .sql()?
            .query_first("SELECT COUNT(*) FROM kituo_sync.log")?
            .unwrap_or(0))
    };
    let before = logged(&mut w)?;
    let pruned = appliance::sync::exchange::hub::prune(&mut w.hub.site)?;
    ensure!(
        pruned > 0 && logged(&mut w)? == before - pruned,
        "{pruned} of {before}"
    );
    let floor: u64 = w
        .hub
        .sql()?
        .query_first("SELECT MIN(pulled) FROM kituo_sync.centers")?
        .unwrap_or(0);
    let below: u64 = w
        .hub
        .sql()?
        .exec_first(
            "SELECT COUNT(*) FROM kituo_sync.log WHERE lseq <= ?",
            (floor,),
        )?
        .unwrap_or(1);
    ensure!(floor > 0 && below == 0);

    // The supervised agent reports a live link and an empty backlog.
    let status = wait_for(Duration::from_secs(30), || {
        sync_status(status_port).filter(|s| s["link"] == "up" && s["backlog_changes"] == 0)
    });
    ensure!(
        status.is_some(),
        "status page: {:?}",
        sync_status(status_port)
    );

    // On battery the supervisor pauses sync: a post written meanwhile stays at the center until
    // mains is back.
    nut.set(ON_BATTERY)?;
    let paused = wait_for(Duration::from_secs(30), || {
        sync_status(status_port).filter(|s| s["link"] == "paused_on_battery")
    });
    ensure!(
        paused.is_some(),
        "status page: {:?}",
        sync_status(status_port)
    );
    let posts = w.hub.dump("forum_posts")?.len();
    reply(&w.centers[1], 4, "written on battery", 20_000)?;
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        w.hub.dump("forum_posts")?.len() == posts,
        "sync went on while on battery"
    );
    nut.set(ON_MAINS)?;
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while w.hub.dump("forum_posts")?.len() == posts && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure!(
        w.hub.dump("forum_posts")?.len() == posts + 1,
        "the post came once mains was back"
    );
    Ok(())
}

#[test]
fn the_hub_refuses_unauthenticated_requests_and_a_center_posing_as_another() -> Result<()> {
    let w = world("kituo-sync-auth", 2)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe(), &w.hub, &dir)?;
    let secret2 = Secret::read(&hub.add_center(exe(), 2)?)?;
    hub.add_center(exe(), 3)?;
    let url = |target: &str| format!("http://{}{target}", hub.addr);
    let call = |site: u32, secret: &Secret, body: &[u8]| {
        let nonce = wire::nonce().unwrap();
        let auth = wire::sign_request(
            secret,
            &RequestParts {
                method: "POST",
                target: wire::PUSH,
                site,
                nonce: &nonce,
                body,
            },
        );
        ureq::post(&url(wire::PUSH))
            .set(wire::SITE_HEADER, &site.to_string())
            .set(wire::NONCE_HEADER, &nonce)
            .set(wire::AUTH_HEADER, &auth)
            .send_bytes(body)
            .map_err(Box::new)
    };
    let batch = wire::encode_batch(&[])?;
    // No headers at all; a made-up secret; center 2's secret used to speak as center 3.
    let bare = ureq::post(&url(wire::PUSH))
        .send_bytes(&batch)
        .map_err(Box::new);
    let made_up = call(2, &Secret::generate()?, &batch);
    let posing = call(3, &secret2, &batch);
    for (what, answer) in [("bare", bare), ("made up", made_up), ("posing", posing)] {
        match answer.map_err(|e| *e) {
            Err(ureq::Error::Status(401, _)) => {}
            other => anyhow::bail!("{what}: expected 401, got {other:?}"),
        }
    }
    // The right secret is accepted, and the answer carries the hub's MAC.
    let ok = call(2, &secret2, &batch)?;
    ensure!(ok.status() == 200);
    ensure!(ok.header(wire::AUTH_HEADER).is_some());
    // A forged change claiming center 3's origin, sent with center 2's own secret, is refused.
    let forged = appliance::sync::engine::change::Change {
        origin: 3,
        seq: 1,
        hlc: 1 << 20,
        table: "forum_posts".into(),
        id: 1,
        op: appliance::sync::engine::change::Op::Delete,
    };
    match call(2, &secret2, &wire::encode_batch(&[forged])?).map_err(|e| *e) {
        Err(ureq::Error::Status(400, r)) => {
            let text = r.into_string()?;
            ensure!(text.contains("refused"), "{text}");
        }
        other => anyhow::bail!("forged origin: expected 400, got {other:?}"),
    }
    ensure!(w.hub.dump("forum_posts")?.len() == 1, "nothing was applied");
    Ok(())
}

/// nginx terminating TLS in front of the hub, as a university would run it, with a certificate from a
/// CA made for the test.
struct TlsFront {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    ca: std::path::PathBuf,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA (`name.pem`) and, when `server` is set, a certificate it signed for 127.0.0.1
/// (`server.pem`, `server.key`).
fn make_ca(dir: &std::path::Path, name: &str, server: bool) -> Result<std::path::PathBuf> {
    kituo_tests::testbed::require("openssl", "openssl")?;
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let args = |line: &str| -> Vec<String> { line.split_whitespace().map(String::from).collect() };
    let run =
        |args: Vec<String>| openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    run(args(&format!(
        "req -x509 -days 2 -subj {subject} -keyout {key} -out {pem} {new_key}"
    )))?;
    if server {
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
        run(args(&format!(
            "req -subj /CN=127.0.0.1 -keyout server.key -out server.csr {new_key}"
        )))?;
        run(args(&format!(
            "x509 -req -in server.csr -CA {pem} -CAkey {key} -CAcreateserial -days 2 \
             -extfile san.ext -out server.pem"
        )))?;
    }
    Ok(dir.join(pem))
}

impl TlsFront {
    fn start(dir: &std::path::Path, upstream: std::net::SocketAddr) -> Result<TlsFront> {
        let nginx = kituo_tests::testbed::require("nginx", "nginx")?;
        let dir = dir.join("tls");
        std::fs::create_dir_all(dir.join("tmp"))?;
        let ca = make_ca(&dir, "university-ca", true)?;
        let port = free_port()?;
        let d = dir.display();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                // One process (no master and worker): killing it at the end leaves nothing behind.
                "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{}}\n\
                 http {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n\
                   fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
                   server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/server.pem;\n\
                     ssl_certificate_key {d}/server.key; client_max_body_size 32m;\n\
                     location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1;\n\
                       proxy_set_header Connection \"\"; }} }} }}\n"
            ),
        )?;
        let child = std::process::Command::new(nginx)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stderr(std::fs::File::create(dir.join("stderr.log"))?)
            .spawn()?;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let front = TlsFront { child, addr, ca };
        let up = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).ok()
        });
        ensure!(
            up.is_some(),
            "nginx did not listen: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Ok(front)
    }
}

#[test]
fn an_https_hub_behind_nginx_is_trusted_through_the_configured_ca_only() -> Result<()> {
    let w = world("kituo-sync-tls", 1)?;
    let dir = w.dir.path().to_owned();
    let hub = HubService::start(exe(), &w.hub, &dir)?;
    let secret = hub.add_center(exe(), 2)?;
    let front = TlsFront::start(&dir, hub.addr)?;
    let password = engine_account(&w.centers[0], &dir)?;
    let verify = |ca: &std::path::Path| -> Result<std::process::Output> {
        let mut opts = AgentOptions::new(front.addr, secret.clone());
        opts.tls_ca = Some(ca.to_owned());
        let config = center_config(&w.centers[0], &dir, &opts, &password, "")?;
        Ok(std::process::Command::new(kituo_tests::appliance_binary())
            .args(["sync", "verify", "--config"])
            .arg(&config)
            .output()?)
    };
    // Another CA's trust is not enough: the agent refuses the hub.
    let stranger = dir.join("stranger");
    std::fs::create_dir_all(&stranger)?;
    let refused = verify(&make_ca(&stranger, "stranger-ca", false)?)?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && said.contains("certificate"),
        "{said}"
    );
    // With the university's CA the exchange and the comparison go through nginx.
    reply(&w.centers[0], 3, "over TLS", 30_000)?;
    let trusted = verify(&front.ca)?;
    let said = String::from_utf8_lossy(&trusted.stdout);
    ensure!(
        trusted.status.success() && said.contains(": identical"),
        "{said}{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    ensure!(
        w.hub.dump("forum_posts")?.len() == 2,
        "the post reached the hub"
    );
    Ok(())
}
