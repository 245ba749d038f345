//! Tokens in PostgreSQL, against the real local server (127.0.0.1:5432, database `test`): the
//! token route lets in a user whose token the query finds and refuses the rest; a yes is
//! remembered for `cache_ttl`, a no is not; the database being unreachable answers 503 and lets
//! nobody in.

mod support;

use herald::config::Config;
use std::time::Duration;
use support::{TestServer, http};

/// Plain: the TLS cases have a test of their own.
const DSN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable";

/// A table of the test's own, with one user and token in it; dropped at the end.
struct Table {
    name: String,
    client: tokio_postgres::Client,
}

impl Table {
    async fn create(label: &str) -> Table {
        let (client, connection) = match tokio_postgres::connect(DSN, tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) => panic!("PostgreSQL at 127.0.0.1:5432 (database `test`) is not reachable: {e} (.ci/run starts it)"),
        };
        tokio::spawn(connection);
        let name = format!("herald_tokens_{label}_{}", std::process::id());
        client.batch_execute(&format!("DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (uuid text, sse_token text)")).await.unwrap();
        client.execute(&format!("INSERT INTO {name} VALUES ('user-1', 'nonce-1'), ('user-2', 'nonce-2')"), &[]).await.unwrap();
        Table { name, client }
    }

    fn query(&self) -> String {
        format!("SELECT 1 FROM {} WHERE uuid = $1 AND sse_token = $2", self.name)
    }

    async fn drop_table(self) {
        self.client.batch_execute(&format!("DROP TABLE {}", self.name)).await.unwrap();
    }
}

fn config(c: &mut Config, dsn: &str, query: String) {
    c.access.subscribe.postgres = true;
    c.access.postgres.dsn = dsn.into();
    c.access.postgres.query = query;
    c.access.postgres.timeout = Duration::from_secs(2);
}

async fn status(server: &TestServer, path: &str) -> (u16, String) {
    let resp = tokio::time::timeout(support::WAIT, http().get(server.url(path)).send()).await.expect("an answer in time").unwrap();
    let status = resp.status().as_u16();
    let body = if status == 200 {
        use futures_util::StreamExt;
        String::from_utf8_lossy(&resp.bytes_stream().next().await.unwrap().unwrap()).into_owned()
    } else {
        resp.text().await.unwrap()
    };
    (status, body)
}

#[tokio::test]
async fn the_token_route_lets_in_only_users_whose_token_the_database_holds() {
    let table = Table::create("route").await;
    let server = TestServer::with(|c| config(c, DSN, table.query())).await;
    let (code, body) = status(&server, "/subscribe/orders/user-1/nonce-1").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with(": connected"), "{body}");
    // The stream is on the channel of the path: an event published there arrives.
    let mut stream = support::Sse::open(&server.url("/subscribe/orders/user-2/nonce-2")).await;
    assert_eq!(stream.status, 200);
    support::subscribers(&server, "orders", 1).await;
    server.publish_data("orders", "shipped").await;
    assert_eq!(stream.data(1).await, ["shipped"]);
    // The Go server's topic + user: an event of the channel for one user reaches only that user.
    for (user, data) in [("user-1", "not for user-2"), ("user-2", "for user-2")] {
        let resp = http().post(server.url("/sse/orders")).json(&serde_json::json!({"users": [user], "data": data})).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(stream.data(1).await, ["for user-2"]);

    for (path, code, why) in [
        ("/subscribe/orders/user-1/nonce-2", 403, "not valid"),
        ("/subscribe/orders/user-3/nonce-1", 403, "not valid"),
        ("/subscribe/orders/user-1/'%20OR%20'1'='1", 403, "not valid"),
        // Anywhere else the policy still wants the path's user and token.
        ("/sse/orders", 401, "/subscribe/{channel}/{user}/{token}"),
    ] {
        let (got, body) = status(&server, path).await;
        assert_eq!(got, code, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
        assert!(!body.contains("nonce"), "{path}: the token is echoed: {body}");
    }
    server.shutdown().await;
    table.drop_table().await;
}

/// On the token route the user and token are checked even where the channel's policy does not
/// ask for them: a wrong token is never let through.
#[tokio::test]
async fn the_token_route_always_checks_its_token() {
    let table = Table::create("always").await;
    let server = TestServer::with(|c| {
        config(c, DSN, table.query());
        c.access.subscribe.postgres = false;
    })
    .await;
    assert_eq!(status(&server, "/subscribe/orders/user-1/nonce-1").await.0, 200);
    assert_eq!(status(&server, "/subscribe/orders/user-1/wrong").await.0, 403);
    // Elsewhere nothing is asked: the policy is open.
    assert_eq!(status(&server, "/sse/orders").await.0, 200);
    server.shutdown().await;
    table.drop_table().await;
}

/// One address guessing tokens is held to `failures_per_minute` refusals, then answered 429
/// without a query; others are not affected.
#[tokio::test]
async fn an_address_guessing_tokens_is_stopped_before_the_database() {
    let table = Table::create("guess").await;
    let server = TestServer::with(|c| {
        config(c, DSN, table.query());
        c.access.postgres.failures_per_minute = 3;
        // Clients come through this machine's proxy, so two of them can be told apart.
        c.access.trusted_proxies = vec!["127.0.0.1".into(), "::1".into()];
    })
    .await;
    let get = async |path: &str, client: &str| {
        http().get(server.url(path)).header("x-forwarded-for", client).send().await.unwrap().status().as_u16()
    };
    let mut seen = Vec::new();
    for i in 0..6 {
        seen.push(get(&format!("/subscribe/a/user-1/guess-{i}"), "198.51.100.7").await);
    }
    // Three refusals within the rate, the fourth over it (which blocks), then no more queries.
    assert_eq!(&seen[..4], [403, 403, 403, 403], "{seen:?}");
    assert!(seen[4..].iter().all(|s| *s == 429), "{seen:?}");
    // Even its right token waits now; another address is not held back.
    assert_eq!(get("/subscribe/a/user-1/nonce-1", "198.51.100.7").await, 429);
    assert_eq!(get("/subscribe/a/user-1/nonce-1", "198.51.100.8").await, 200);
    server.shutdown().await;
    table.drop_table().await;
}

#[tokio::test]
async fn a_yes_is_remembered_for_the_cache_ttl_and_a_no_never() {
    let table = Table::create("cache").await;
    let server = TestServer::with(|c| {
        config(c, DSN, table.query());
        c.access.postgres.cache_ttl = Duration::from_secs(60);
    })
    .await;
    assert_eq!(status(&server, "/subscribe/a/user-1/nonce-1").await.0, 200);
    assert_eq!(status(&server, "/subscribe/a/user-9/nonce-9").await.0, 403);
    table.client.execute(&format!("DELETE FROM {} WHERE uuid = 'user-1'", table.name), &[]).await.unwrap();
    table.client.execute(&format!("INSERT INTO {} VALUES ('user-9', 'nonce-9')", table.name), &[]).await.unwrap();
    // Revoked, but remembered; issued, and taken at once.
    assert_eq!(status(&server, "/subscribe/a/user-1/nonce-1").await.0, 200);
    assert_eq!(status(&server, "/subscribe/a/user-9/nonce-9").await.0, 200);
    server.shutdown().await;

    // Without a cache the revocation counts at once.
    let server = TestServer::with(|c| {
        config(c, DSN, table.query());
        c.access.postgres.cache_ttl = Duration::ZERO;
    })
    .await;
    assert_eq!(status(&server, "/subscribe/a/user-9/nonce-9").await.0, 200);
    table.client.execute(&format!("DELETE FROM {} WHERE uuid = 'user-9'", table.name), &[]).await.unwrap();
    assert_eq!(status(&server, "/subscribe/a/user-9/nonce-9").await.0, 403);
    server.shutdown().await;
    table.drop_table().await;
}

#[tokio::test]
async fn an_unreachable_database_answers_503_and_lets_nobody_in() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=test");
    let server = TestServer::with(|c| config(c, &dsn, "SELECT 1 FROM users WHERE uuid = $1 AND sse_token = $2".into())).await;
    for path in ["/subscribe/orders/user-1/nonce-1", "/subscribe/orders/anyone/anything"] {
        let (code, body) = status(&server, path).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("token database is unavailable"), "{body}");
        assert!(!body.contains(&port.to_string()), "the database's address is in the answer: {body}");
    }
    server.shutdown().await;

    // A token the query cannot even read (SQLSTATE class 22, a data exception) is a no.
    let server = TestServer::with(|c| config(c, DSN, "SELECT 1 WHERE $1::text <> '' AND $2::text::int > 0".into())).await;
    assert_eq!(status(&server, "/subscribe/orders/user-1/not-a-number").await.0, 403);
    assert_eq!(status(&server, "/subscribe/orders/user-1/42").await.0, 200);
    server.shutdown().await;

    // A query that fails (no such table) is the database failing too: 503, not a guess.
    let server = TestServer::with(|c| config(c, DSN, "SELECT 1 FROM no_such_table_here WHERE a = $1 AND b = $2".into())).await;
    assert_eq!(status(&server, "/subscribe/orders/user-1/nonce-1").await.0, 503);
    server.shutdown().await;
}

/// The local server offers TLS with a self-signed certificate: checked, it is refused (503,
/// the reason in the log); with `tls_insecure` the session is encrypted and works.
#[tokio::test]
async fn tls_checks_the_certificate_unless_told_not_to() {
    let table = Table::create("tls").await;
    let tls_dsn = "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=require";
    let ssl: String = table.client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "on", "the local PostgreSQL must offer TLS (ssl = on, Debian's default) for this test");
    let server = TestServer::with(|c| config(c, tls_dsn, table.query())).await;
    let (code, body) = status(&server, "/subscribe/a/user-1/nonce-1").await;
    assert_eq!(code, 503, "an unverifiable certificate is taken: {body}");
    server.shutdown().await;
    let server = TestServer::with(|c| {
        config(c, tls_dsn, table.query());
        c.access.postgres.tls_insecure = true;
    })
    .await;
    let (code, body) = status(&server, "/subscribe/a/user-1/nonce-1").await;
    assert_eq!(code, 200, "{body}");
    server.shutdown().await;
    table.drop_table().await;
}

#[test]
fn start_up_names_what_is_wrong_with_the_database_settings() {
    type Tweak = fn(&mut Config);
    let cases: [(&str, Tweak); 5] = [
        ("access.postgres.dsn", |c| c.access.subscribe.postgres = true),
        ("access.postgres.query", |c| {
            c.access.postgres.dsn = DSN.into();
            c.access.postgres.query = "SELECT 1 FROM users WHERE uuid = $1".into();
        }),
        ("access.postgres.route", |c| {
            c.access.postgres.dsn = DSN.into();
            c.access.postgres.route = "/sse/{channel}/{user}/{token}".into();
        }),
        ("access.postgres.route", |c| {
            c.access.postgres.dsn = DSN.into();
            c.access.postgres.route = "/subscribe/{channel}/{token}".into();
        }),
        ("access.postgres.client_key_file", |c| {
            c.access.postgres.dsn = DSN.into();
            c.access.postgres.client_cert_file = Some("/etc/herald/client.pem".into());
        }),
    ];
    for (key, tweak) in cases {
        let mut config = Config::default();
        tweak(&mut config);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}
