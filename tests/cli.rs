//! The `herald` binary: configuration layers and errors, `serve` with signals, and the
//! `publish` / `subscribe` client against a running hub.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::process::{Served, herald, wait_with_timeout};

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn effective(stdout: &str) -> toml::Table {
    stdout.parse().unwrap_or_else(|e| panic!("herald config prints TOML: {e}\n{stdout}"))
}

#[test]
fn runs_with_no_file_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(herald(dir.path()).arg("config"));
    assert!(ok, "{err}");
    let t = effective(&out);
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(t["keepalive_interval"].as_str(), Some("30s"));
    assert_eq!(t["history"]["size"].as_integer(), Some(1000));
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custom.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1111\"\nkeepalive_interval = \"5s\"\nping_event = true\n[history]\nsize = 10\nmax_memory = \"64MiB\"\n",
    )
    .unwrap();
    let (ok, out, err) = run(herald(dir.path())
        .args(["config", "--listen", "127.0.0.1:3333", "--workers", "1", "--data-dir", "/srv/herald", "--config"])
        .arg(&file)
        .env("HERALD_KEEPALIVE_INTERVAL", "7s")
        .env("HERALD_HISTORY__SIZE", "20")
        .env("HERALD_CORS__ALLOWED_ORIGINS", "https://a.example,https://b.example"));
    assert!(ok, "{err}");
    let t = effective(&out);
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:3333"), "flag beats file");
    assert_eq!(t["workers"].as_integer(), Some(1));
    assert_eq!(t["history"]["dir"].as_str(), Some("/srv/herald"));
    assert_eq!(t["history"]["store"].as_str(), Some("disk"), "the disk store is the default");
    assert_eq!(t["keepalive_interval"].as_str(), Some("7s"), "env beats file");
    assert_eq!(t["history"]["size"].as_integer(), Some(20), "nested env key");
    assert_eq!(t["history"]["max_memory"].as_str(), Some("64MiB"), "file beats default");
    assert_eq!(t["ping_event"].as_bool(), Some(true));
    assert_eq!(t["max_channels"].as_integer(), Some(100_000), "default stays");
    let origins: Vec<&str> = t["cors"]["allowed_origins"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(origins, ["https://a.example", "https://b.example"]);
    // The flag beats the environment too, and HERALD_CONFIG names the file.
    let (ok, out, _) = run(herald(dir.path())
        .args(["config", "--keepalive-interval", "9s"])
        .env("HERALD_CONFIG", &file)
        .env("HERALD_KEEPALIVE_INTERVAL", "7s"));
    assert!(ok);
    let t = effective(&out);
    assert_eq!(t["keepalive_interval"].as_str(), Some("9s"));
    assert_eq!(t["history"]["size"].as_integer(), Some(10));
}

#[test]
fn herald_toml_in_the_working_directory_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.toml"), "max_channels = 7\n").unwrap();
    let (ok, out, err) = run(herald(dir.path()).arg("config"));
    assert!(ok, "{err}");
    assert_eq!(effective(&out)["max_channels"].as_integer(), Some(7));
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // (file text, environment, what the error must name)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("colour = \"blue\"\n", vec![], "colour"),
        ("[history]\nsize = \"lots\"\n", vec![], "size"),
        ("keepalive_interval = \"30 parsecs\"\n", vec![], "keepalive_interval"),
        ("listen = \"nowhere\"\n", vec![], "listen"),
        ("lag_policy = \"panic\"\n", vec![], "lag_policy"),
        ("[limits]\nwrite_batch = 10\n", vec![], "limits.write_batch"),
        ("[[channels]]\npattern = \"bad name\"\n", vec![], "channels[0].pattern"),
        ("[cors]\nallowed_origins = [\"app.example\"]\n", vec![], "cors.allowed_origins"),
        ("this is not toml", vec![], "custom.toml"),
        ("", vec![("HERALD_NOPE", "1")], "nope"),
        ("", vec![("HERALD_MAX_CHANNELS", "-3")], "max_channels"),
        ("", vec![("HERALD_HISTORY__TTL", "soon")], "ttl"),
    ];
    let file = dir.path().join("custom.toml");
    for (text, env, key) in cases {
        std::fs::write(&file, text).unwrap();
        let mut cmd = herald(dir.path());
        cmd.args(["serve", "--config"]).arg(&file);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let (ok, _, err) = run(&mut cmd);
        assert!(!ok, "{text:?} {env:?} should be refused");
        assert!(err.contains(key), "error for {text:?} {env:?} should name `{key}`: {err}");
    }
    let (ok, _, err) = run(herald(dir.path()).args(["config", "--config", "/no/such/herald.toml"]));
    assert!(!ok && err.contains("/no/such/herald.toml"), "{err}");
}

/// What the CLI tests ask of a running hub.
impl Served {
    /// Open subscriptions, from `/stats` (plain HTTP/1.0 over a std socket: no runtime needed).
    fn subscriptions(&self) -> u64 {
        use std::io::Write;
        let mut conn = std::net::TcpStream::connect(self.url.trim_start_matches("http://")).unwrap();
        conn.write_all(b"GET /stats HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        serde_json::from_str::<serde_json::Value>(body).unwrap()["totals"]["subscriptions"].as_u64().unwrap()
    }

    /// Waits until `n` subscriptions are open.
    fn wait_for_subscriptions(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.subscriptions() != n {
            assert!(Instant::now() < deadline, "{n} subscriptions did not open");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self, dir: &std::path::Path) -> Command {
        let mut cmd = herald(dir);
        cmd.env("HERALD_URL", &self.url);
        cmd
    }
}

#[test]
fn publish_and_subscribe_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let mut sub =
        server.client(dir.path()).args(["subscribe", "cli/demo", "--json", "--count", "3"]).stdout(Stdio::piped()).spawn().unwrap();
    server.wait_for_subscriptions(1);
    let (ok, id1, err) = run(server.client(dir.path()).args(["publish", "cli/demo", "hello", "--event", "greet"]));
    assert!(ok, "{err}");
    let mut publish_stdin = server
        .client(dir.path())
        .args(["publish", "cli/demo", "-", "--id", "custom-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut publish_stdin.stdin.take().unwrap(), b"from\nstdin").unwrap();
    let out = publish_stdin.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "custom-1");
    let (ok, _, _) = run(server.client(dir.path()).args(["publish", "cli/demo", "third"]));
    assert!(ok);
    assert!(wait_with_timeout(&mut sub, Duration::from_secs(10)).success());
    let mut text = String::new();
    sub.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0], serde_json::json!({ "id": id1.trim(), "event": "greet", "data": "hello" }));
    assert_eq!(events[1], serde_json::json!({ "id": "custom-1", "event": "message", "data": "from\nstdin" }));
    assert_eq!(events[2]["data"], "third");
    // Resuming after the first id gets the other two.
    let (ok, out, err) =
        run(server.client(dir.path()).args(["subscribe", "cli/demo", "--last-event-id", id1.trim(), "--count", "2", "--no-reconnect"]));
    assert!(ok, "{err}");
    // Human output: `<id> [<event>] <data>`, data lines as they are.
    assert!(out.starts_with("custom-1 [message] from\nstdin\n"), "{out}");
    assert!(out.trim_end().ends_with("[message] third"), "{out}");
    // Errors from the hub reach the user.
    let (ok, _, err) = run(server.client(dir.path()).args(["publish", "cli/demo", "x", "--id", "bad\nid"]));
    assert!(!ok && err.contains("400"), "{err}");
}

#[test]
fn sigterm_ends_streams_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Served::start(dir.path());
    let mut sub = server.client(dir.path()).args(["subscribe", "s", "--no-reconnect"]).stdout(Stdio::null()).spawn().unwrap();
    server.wait_for_subscriptions(1);
    let exit = server.terminate(Duration::from_secs(10));
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    // The subscriber saw its stream end and exited on its own.
    assert!(wait_with_timeout(&mut sub, Duration::from_secs(10)).success());
}

#[test]
fn hash_key_makes_a_key_and_the_hash_that_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(herald(dir.path()).arg("hash-key"));
    assert!(ok, "{err}");
    let field = |name: &str| out.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("{name} in {out}"));
    let (key, hash) = (field("key:"), field("hash:"));
    assert_eq!(key.len(), 64, "32 random bytes in hex: {key}");
    assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64, "{hash}");
    let (ok2, again, _) = run(herald(dir.path()).arg("hash-key"));
    assert!(ok2 && !again.contains(key), "a new key each time");
    // The hash of a key one already has, from standard input (not the command line, which
    // other users of the machine can see).
    let mut child = herald(dir.path()).args(["hash-key", "--stdin"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{key}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hash);
    // The configuration takes it, and refuses a key pasted where its hash belongs.
    std::fs::write(dir.path().join("herald.toml"), format!("[access.publish]\napi_keys = [\"{hash}\"]\n")).unwrap();
    let (ok, _, err) = run(herald(dir.path()).arg("config"));
    assert!(ok, "{err}");
    std::fs::write(dir.path().join("herald.toml"), format!("[access.publish]\napi_keys = [\"{key}\"]\n")).unwrap();
    let (ok, _, err) = run(herald(dir.path()).arg("config"));
    assert!(!ok && err.contains("access.publish.api_keys") && err.contains("herald hash-key") && !err.contains(key), "{err}");
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(herald(dir.path()).arg("--version"));
    assert!(ok, "{err}");
    let git = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    let commit = match git {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "unknown".into(),
    };
    assert_eq!(out.trim(), format!("herald {} ({commit})", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let commands = ["serve", "config", "publish", "subscribe", "bench", "hash-key", "store", "completions", "man"];
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = run(herald(dir.path()).args(["completions", shell]));
        assert!(ok, "{shell}: {err}");
        for c in commands {
            assert!(out.contains(c), "{shell} completions know `{c}`");
        }
    }
    let (ok, out, err) = run(herald(dir.path()).args(["completions", "tcsh"]));
    assert!(!ok && err.contains("tcsh"), "an unknown shell is refused by name: {out}{err}");
    let (ok, man, err) = run(herald(dir.path()).arg("man"));
    assert!(ok, "{err}");
    assert!(man.contains(".TH herald 1"), "a section 1 man page");
    for c in commands {
        assert!(man.contains(&c.replace('-', "\\-")), "the man page names `{c}`");
    }
}

/// The unit in packaging/ is what systemd accepts without a warning (`systemd-analyze verify`),
/// run against this build of the binary.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/herald.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/herald serve"), "the unit runs herald serve");
    // The man page is not installed here; the binary is this build's.
    let unit: String = unit
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .map(|l| l.replace("/usr/local/bin/herald", env!("CARGO_BIN_EXE_herald")) + "\n")
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (Debian package systemd): the unit file is checked with it");
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}
