//! The access gate: every kind of request on each connection path (the HTTP/1 socket path,
//! hyper's HTTP/1 and HTTP/2) is refused without its credential (401), refused with a wrong one
//! (403), and served with the right one; header rules of every kind; per-channel policies; the
//! publish origins.

mod support;

use futures_util::StreamExt;
use herald::config::access::{HeaderRule, PolicyConfig, SignatureEncoding, SignatureOn, TokenEncoding};
use herald::config::{ChannelAccessConfig, ChannelConfig, Config};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::TestServer;

fn policy(rules: &[(&str, HeaderRule)]) -> PolicyConfig {
    PolicyConfig { headers: rules.iter().map(|(name, rule)| (name.to_string(), rule.clone())).collect(), ..PolicyConfig::default() }
}

fn equals(value: &str) -> HeaderRule {
    HeaderRule::Equals { value: value.into(), case_sensitive: true }
}

/// How a request reaches the server.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// HTTP/1.1 that the socket path serves: a GET under /sse, a POST with a small length.
    Socket,
    /// HTTP/1.1 that goes to hyper: a GET with `Expect`, a POST with a chunked body.
    Hyper,
    Http2,
}

struct Asked {
    status: u16,
    www_authenticate: Option<String>,
}

async fn ask(server: &TestServer, path: Path, method: &str, target: &str, headers: &[(&str, &str)], body: &'static str) -> Asked {
    let client = match path {
        Path::Http2 => reqwest::Client::builder().http2_prior_knowledge().build().unwrap(),
        _ => reqwest::Client::builder().http1_only().build().unwrap(),
    };
    let mut req = client.request(method.parse().unwrap(), server.url(target));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if method == "POST" {
        req = req.header("content-type", "application/json");
        req = match path {
            Path::Hyper => req.body(reqwest::Body::wrap_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(body)]))),
            _ => req.body(body),
        };
    } else if matches!(path, Path::Hyper) {
        req = req.header("expect", "100-continue");
    }
    let resp = tokio::time::timeout(support::WAIT, req.send()).await.expect("an answer in time").expect("the request is answered");
    if matches!(path, Path::Http2) {
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    }
    let www_authenticate = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status().as_u16();
    if status == 200 && method == "GET" && target.starts_with("/sse") {
        assert_eq!(resp.headers()["content-type"], "text/event-stream; charset=utf-8");
        // The preamble arrives: the stream really opened.
        let first = resp.bytes_stream().next().await.expect("a first chunk").unwrap();
        assert!(first.starts_with(b": connected"), "{first:?}");
    }
    Asked { status, www_authenticate }
}

#[tokio::test]
async fn every_request_on_every_path_passes_the_gate() {
    let server = TestServer::with(|c| {
        c.access.subscribe = policy(&[("x-key", equals("sub-secret"))]);
        c.access.publish = policy(&[("authorization", equals("Bearer pub-secret"))]);
        c.access.stats = policy(&[("x-key", equals("stats-secret"))]);
    })
    .await;
    let requests: [(&str, &str, &'static str, &str, &str); 5] = [
        ("GET", "/sse/a", "", "x-key", "sub-secret"),
        ("GET", "/sse?channel=a&channel=b", "", "x-key", "sub-secret"),
        ("POST", "/sse/a", r#"{"data":"x"}"#, "authorization", "Bearer pub-secret"),
        ("POST", "/publish", r#"{"channel":"a","data":"x"}"#, "authorization", "Bearer pub-secret"),
        ("GET", "/stats", "", "x-key", "stats-secret"),
    ];
    for path in [Path::Socket, Path::Hyper, Path::Http2] {
        for (method, target, body, header, secret) in requests {
            let what = format!("{method} {target} over {path:?}");
            let none = ask(&server, path, method, target, &[], body).await;
            assert_eq!(none.status, 401, "{what} without a credential");
            let bearer = header == "authorization";
            assert_eq!(none.www_authenticate.as_deref(), bearer.then_some("Bearer"), "{what}: WWW-Authenticate");
            let wrong_value = if bearer { "Bearer nope" } else { "nope" };
            assert_eq!(ask(&server, path, method, target, &[(header, wrong_value)], body).await.status, 403, "{what} with a wrong one");
            assert_eq!(ask(&server, path, method, target, &[(header, secret)], body).await.status, 200, "{what} with the right one");
        }
        // Open to anyone: the liveness probe; and an unknown route is a 404, not a 500.
        assert_eq!(ask(&server, path, "GET", "/healthz", &[], "").await.status, 200, "/healthz over {path:?}");
        assert_eq!(ask(&server, path, "GET", "/nowhere", &[], "").await.status, 404, "/nowhere over {path:?}");
    }
    // Nothing refused was published: three accepted publishes per path, each to `a`.
    let stats = server.stats_with(&[("x-key", "stats-secret")]).await;
    assert_eq!(stats["channels"]["a"]["published"], 6, "{stats}");
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

async fn publish_status(server: &TestServer, headers: &[(&str, &str)], body: &'static str) -> u16 {
    ask(server, Path::Socket, "POST", "/sse/hooks", headers, body).await.status
}

#[tokio::test]
async fn header_rules_of_every_kind() {
    // SAFETY: set before the server starts, by this test only (no other test reads this name).
    unsafe { std::env::set_var("HERALD_TEST_ACCESS_SECRET", "from-the-environment") };
    let server = TestServer::with(|c| {
        c.access.subscribe = policy(&[
            ("x-exists", HeaderRule::Exists),
            ("x-case", HeaderRule::Equals { value: "Token-ABC".into(), case_sensitive: false }),
            ("x-client", HeaderRule::Matches { pattern: "^client-[0-9]+$".into() }),
            ("x-secret", HeaderRule::Secret { value: "HERALD_TEST_ACCESS_SECRET".into() }),
        ]);
    })
    .await;
    let good = [("x-exists", "1"), ("x-case", "token-abc"), ("x-client", "client-42"), ("x-secret", "from-the-environment")];
    let with = |replace: (&'static str, &'static str)| -> Vec<(&'static str, &'static str)> {
        good.iter().map(|&(n, v)| if n == replace.0 { replace } else { (n, v) }).collect()
    };
    let get = async |headers: &[(&str, &str)]| ask(&server, Path::Socket, "GET", "/sse/c", headers, "").await.status;
    assert_eq!(get(&good).await, 200);
    assert_eq!(get(&good[1..]).await, 401, "exists: missing");
    assert_eq!(get(&with(("x-exists", ""))).await, 401, "exists: empty counts as missing");
    assert_eq!(get(&with(("x-case", "TOKEN-ABC"))).await, 200, "equals, case ignored");
    assert_eq!(get(&with(("x-case", "token-abd"))).await, 403, "equals: wrong");
    assert_eq!(get(&with(("x-client", "client-4x"))).await, 403, "matches: wrong");
    assert_eq!(get(&with(("x-client", "my-client-42"))).await, 403, "matches: anchored by the pattern");
    assert_eq!(get(&with(("x-secret", "from-the-environmen"))).await, 403, "secret: a prefix is wrong");
    assert_eq!(get(&with(("x-secret", "from-the-environment!"))).await, 403, "secret: longer is wrong");
    // A missing credential is told before a wrong one.
    let mut missing_and_wrong = with(("x-case", "wrong"));
    missing_and_wrong.retain(|(n, _)| *n != "x-secret");
    assert_eq!(get(&missing_and_wrong).await, 401);
}

#[tokio::test]
async fn signature_rules_cover_the_publish_body() {
    let server = TestServer::with(|c| {
        c.channels = vec![
            ChannelConfig {
                pattern: "hooks".into(),
                access: Some(ChannelAccessConfig {
                    publish: Some(policy(&[(
                        "x-hub-signature-256",
                        HeaderRule::Signature {
                            token: "webhook-secret".into(),
                            token_encoding: TokenEncoding::None,
                            signature_prefix: "sha256=".into(),
                            signature_on: SignatureOn::Body,
                            signature_encoding: SignatureEncoding::Hex,
                        },
                    )])),
                    subscribe: None,
                }),
                ..ChannelConfig::default()
            },
            ChannelConfig {
                pattern: "signed/*".into(),
                access: Some(ChannelAccessConfig {
                    publish: Some(policy(&[(
                        "x-signature",
                        HeaderRule::Signature {
                            token: hex::encode(b"binary\x00key"),
                            token_encoding: TokenEncoding::Hex,
                            signature_prefix: String::new(),
                            signature_on: SignatureOn::HeadersThenBody { separator: "\n".into(), headers: vec!["x-timestamp".into()] },
                            signature_encoding: SignatureEncoding::Hex,
                        },
                    )])),
                    subscribe: None,
                }),
                ..ChannelConfig::default()
            },
        ];
    })
    .await;
    let body = r#"{"data":"deployed"}"#;
    let good = format!("sha256={}", hmac_hex(b"webhook-secret", &[body.as_bytes()]));
    assert_eq!(publish_status(&server, &[("x-hub-signature-256", &good)], body).await, 200);
    assert_eq!(publish_status(&server, &[], body).await, 401, "unsigned");
    let of_other_body = format!("sha256={}", hmac_hex(b"webhook-secret", &[b"{\"data\":\"other\"}"]));
    assert_eq!(publish_status(&server, &[("x-hub-signature-256", &of_other_body)], body).await, 403, "signature of another body");
    let wrong_key = format!("sha256={}", hmac_hex(b"guess", &[body.as_bytes()]));
    assert_eq!(publish_status(&server, &[("x-hub-signature-256", &wrong_key)], body).await, 403, "another key");
    let no_prefix = hmac_hex(b"webhook-secret", &[body.as_bytes()]);
    assert_eq!(publish_status(&server, &[("x-hub-signature-256", &no_prefix)], body).await, 403, "prefix missing");
    assert_eq!(publish_status(&server, &[("x-hub-signature-256", "sha256=zz")], body).await, 403, "not hex");
    // Subscribing to the channel is open: its entry has a publish policy only.
    assert_eq!(ask(&server, Path::Socket, "GET", "/sse/hooks", &[], "").await.status, 200);

    // Headers, then the body: the timestamp is signed too.
    let key = b"binary\x00key";
    let signed = hmac_hex(key, &[b"1700000000", b"\n", body.as_bytes()]);
    let post = async |headers: &[(&str, &str)]| ask(&server, Path::Hyper, "POST", "/sse/signed/x", headers, body).await.status;
    assert_eq!(post(&[("x-timestamp", "1700000000"), ("x-signature", &signed)]).await, 200);
    assert_eq!(post(&[("x-timestamp", "1700000001"), ("x-signature", &signed)]).await, 403, "timestamp changed");
}

#[tokio::test]
async fn a_request_needs_the_policy_of_every_channel_it_names() {
    let server = TestServer::with(|c| {
        c.channels = vec![ChannelConfig {
            pattern: "private/*".into(),
            access: Some(ChannelAccessConfig { subscribe: Some(policy(&[("x-key", equals("k"))])), publish: None }),
            ..ChannelConfig::default()
        }];
    })
    .await;
    let get = async |target: &str, headers: &[(&str, &str)]| ask(&server, Path::Socket, "GET", target, headers, "").await.status;
    assert_eq!(get("/sse/public", &[]).await, 200, "no rule: open");
    assert_eq!(get("/sse/private/a", &[]).await, 401);
    assert_eq!(get("/sse?channel=public&channel=private/a", &[]).await, 401, "one guarded channel among several");
    assert_eq!(get("/sse?channel=public&channel=private/a", &[("x-key", "k")]).await, 200);
    // A batch on /publish names its channels in the body: publishing is open (loopback) here.
    let batch = r#"[{"channel":"public","data":"1"},{"channel":"private/a","data":"2"}]"#;
    assert_eq!(ask(&server, Path::Socket, "POST", "/publish", &[], batch).await.status, 200);
}

#[tokio::test]
async fn a_web_page_publishes_only_from_a_listed_origin() {
    let server = TestServer::with(|c| c.access.publish_origins = vec!["https://app.example.com".into()]).await;
    for path in [Path::Socket, Path::Hyper, Path::Http2] {
        let post = async |headers: &[(&str, &str)]| ask(&server, path, "POST", "/sse/o", headers, r#"{"data":"x"}"#).await.status;
        assert_eq!(post(&[("origin", "https://evil.example")]).await, 403, "{path:?}");
        assert_eq!(post(&[("origin", "null")]).await, 403, "{path:?}: a sandboxed page");
        assert_eq!(post(&[("origin", "https://app.example.com")]).await, 200, "{path:?}");
        assert_eq!(post(&[]).await, 200, "{path:?}: no Origin, not a page");
        // Subscribing from any page stays a matter of CORS.
        assert_eq!(ask(&server, path, "GET", "/sse/o", &[("origin", "https://evil.example")], "").await.status, 200);
    }
    assert_eq!(server.stats().await["channels"]["o"]["published"], 6);
}

#[test]
fn a_secret_rule_without_its_environment_variable_stops_start_up() {
    let mut config = Config::default();
    config.access.publish = policy(&[("x-key", HeaderRule::Secret { value: "HERALD_TEST_UNSET_VARIABLE".into() })]);
    config.validate().expect("valid in itself");
    let err = herald::access::Gate::new(&config).err().expect("refused").to_string();
    assert!(err.contains("access.publish.headers.x-key") && err.contains("HERALD_TEST_UNSET_VARIABLE"), "{err}");
}

#[test]
fn configuration_errors_name_their_key() {
    let toml = |text: &str| -> String {
        let config: Result<Config, _> = toml::from_str(text);
        match config {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().err().map(|e| e.to_string()).unwrap_or_default(),
        }
    };
    let e = toml("[access.subscribe.headers]\n\"X-Key\" = { type = \"matches\", pattern = \"(\" }\n");
    assert!(e.contains("access.subscribe.headers.X-Key") && e.contains("regular expression"), "{e}");
    let e = toml("[access.subscribe.headers]\n\"X-Key\" = { type = \"equal\", value = \"v\" }\n");
    assert!(e.contains("equal"), "{e}");
    let e = toml("[access.publish.headers]\n\"X-Sig\" = { type = \"signature\", token = \"zz\", token_encoding = \"hex\" }\n");
    assert!(e.contains("access.publish.headers.X-Sig") && e.contains("hex"), "{e}");
    let e = toml("[access]\npublish_origins = [\"https://app.example.com/\"]\n");
    assert!(e.contains("access.publish_origins"), "{e}");
    let e = toml("[access]\nanonymous_publish = \"everyone\"\n");
    assert!(e.contains("anonymous_publish") || e.contains("everyone"), "{e}");
    assert_eq!(toml("[access.subscribe.headers]\n\"Authorization\" = { type = \"exists\" }\n"), "");
}

#[tokio::test]
async fn api_keys_are_checked_against_their_hashes() {
    let server = TestServer::with(|c| c.access.publish.api_keys = vec![herald::access::keys::hash_of("k3y")]).await;
    let post = async |headers: &[(&str, &str)]| ask(&server, Path::Socket, "POST", "/sse/k", headers, r#"{"data":"x"}"#).await;
    assert_eq!(post(&[("authorization", "Bearer k3y")]).await.status, 200);
    assert_eq!(post(&[("authorization", "bearer k3y")]).await.status, 200, "the scheme's case does not matter");
    assert_eq!(post(&[("x-api-key", "k3y")]).await.status, 200);
    let none = post(&[]).await;
    assert_eq!((none.status, none.www_authenticate.as_deref()), (401, Some("Bearer")));
    assert_eq!(post(&[("authorization", "Bearer k3y!")]).await.status, 403);
    assert_eq!(post(&[("x-api-key", "K3Y")]).await.status, 403);
    assert_eq!(post(&[("authorization", "Basic azN5")]).await.status, 401, "not a bearer key: missing");
}

#[tokio::test]
async fn address_allowlists_and_trusted_proxies() {
    // Tests speak over loopback only: the peer is 127.0.0.1 (or ::1), and other client
    // addresses come through a trusted proxy's header.
    let only_10 = TestServer::with(|c| c.access.publish.allow_from = vec!["10.0.0.0/8".into()]).await;
    let post = async |server: &TestServer, headers: &[(&str, &str)]| {
        ask(server, Path::Socket, "POST", "/sse/p", headers, r#"{"data":"x"}"#).await.status
    };
    assert_eq!(post(&only_10, &[]).await, 403, "loopback is not in 10/8");
    assert_eq!(post(&only_10, &[("x-forwarded-for", "10.1.2.3")]).await, 403, "no trusted proxy: the header is ignored");

    let proxied = TestServer::with(|c| {
        c.access.trusted_proxies = vec!["127.0.0.1".into()];
        c.access.publish.allow_from = vec!["198.51.100.0/24".into(), "2001:db8::/32".into()];
    })
    .await;
    assert_eq!(post(&proxied, &[("x-forwarded-for", "198.51.100.7")]).await, 200);
    assert_eq!(post(&proxied, &[("x-forwarded-for", "203.0.113.1")]).await, 403);
    assert_eq!(post(&proxied, &[("x-forwarded-for", "198.51.100.7, 203.0.113.1")]).await, 403, "the nearest untrusted hop decides");
    assert_eq!(post(&proxied, &[]).await, 403, "the proxy itself is not allowed");
    // A proxy that writes X-Forwarded-For passes the client's own Forwarded through: not read.
    assert_eq!(post(&proxied, &[("forwarded", "for=198.51.100.7"), ("x-forwarded-for", "203.0.113.1")]).await, 403);

    let rfc_proxied = TestServer::with(|c| {
        c.access.trusted_proxies = vec!["127.0.0.1".into()];
        c.access.forwarded_header = herald::config::access::ForwardedHeader::Forwarded;
        c.access.publish.allow_from = vec!["198.51.100.0/24".into(), "2001:db8::/32".into()];
    })
    .await;
    assert_eq!(post(&rfc_proxied, &[("forwarded", "for=\"[2001:db8::5]:1234\"")]).await, 200, "IPv6 through Forwarded");
    assert_eq!(post(&rfc_proxied, &[("forwarded", "for=2001:db9::5")]).await, 403);
    assert_eq!(post(&rfc_proxied, &[("forwarded", "for=198.51.100.7, for=_hidden")]).await, 403, "an unreadable hop lets nobody in");

    // Anonymous publishing is for this machine: a trusted local proxy's remote client is not.
    let anonymous = TestServer::with(|c| c.access.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
    assert_eq!(post(&anonymous, &[]).await, 200);
    assert_eq!(post(&anonymous, &[("x-forwarded-for", "203.0.113.1")]).await, 403);
    assert_eq!(post(&anonymous, &[("x-forwarded-for", "unknown")]).await, 403, "an unreadable client is not this machine");
    assert_eq!(post(&anonymous, &[("x-forwarded-for", "127.0.0.2")]).await, 200);

    // IPv6 peers, on ::1.
    for (allow, want) in [("::1", 200), ("2001:db8::/32", 403)] {
        let v6 = TestServer::with(|c| {
            c.listen = "[::1]:0".parse().unwrap();
            c.access.publish.allow_from = vec![allow.into()];
        })
        .await;
        assert!(v6.addr.is_ipv6());
        assert_eq!(post(&v6, &[]).await, want, "allow_from {allow} for a peer on ::1");
    }
}

#[tokio::test]
async fn one_address_holds_at_most_its_streams() {
    let server = TestServer::with(|c| c.access.max_streams_per_client = 2).await;
    for path in [Path::Socket, Path::Hyper, Path::Http2] {
        let client = match path {
            Path::Http2 => reqwest::Client::builder().http2_prior_knowledge().build().unwrap(),
            _ => reqwest::Client::builder().http1_only().build().unwrap(),
        };
        let open = async || {
            let mut req = client.get(server.url("/sse/limited"));
            if matches!(path, Path::Hyper) {
                req = req.header("expect", "100-continue");
            }
            req.send().await.unwrap()
        };
        let first = open().await;
        let second = open().await;
        assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200), "{path:?}");
        let third = open().await;
        assert_eq!(third.status(), 429, "{path:?}: a third stream from one address");
        let body: serde_json::Value = third.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("max_streams_per_client"), "{body}");
        // Publishing is not a stream: not limited.
        assert_eq!(ask(&server, path, "POST", "/sse/limited", &[], r#"{"data":"x"}"#).await.status, 200);
        // A stream that ends gives its slot back.
        drop(first);
        support::eventually(async || open().await.status() == 200).await;
        drop(second);
        support::eventually(async || server.stats().await["totals"]["subscriptions"] == 0).await;
    }
}

#[tokio::test]
async fn publishers_over_their_rate_are_told_when_to_retry() {
    let server = TestServer::with(|c| {
        c.access.publish_rate = herald::config::access::PublishRateConfig { per_second: 1, burst: 2 };
        // Keys that a policy checks are publishers of their own.
        c.access.publish.api_keys = ["key-Socket", "key-Http2"].iter().map(|k| herald::access::keys::hash_of(k)).collect();
    })
    .await;
    for path in [Path::Socket, Path::Http2] {
        let client = match path {
            Path::Http2 => reqwest::Client::builder().http2_prior_knowledge().build().unwrap(),
            _ => reqwest::Client::builder().http1_only().build().unwrap(),
        };
        let post = async |key: Option<&str>| {
            let mut req = client.post(server.url("/sse/rated")).header("content-type", "application/json").body(r#"{"data":"x"}"#);
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            req.send().await.unwrap()
        };
        // Each path's publisher is a key of its own, so the two paths do not share a bucket.
        let key = format!("key-{path:?}");
        assert_eq!(post(Some(&key)).await.status(), 200);
        assert_eq!(post(Some(&key)).await.status(), 200);
        let refused = post(Some(&key)).await;
        assert_eq!(refused.status(), 429, "{path:?}");
        assert_eq!(refused.headers()["retry-after"], "1", "{path:?}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("access.publish_rate"), "{body}");
    }
    // Subscribing is not a publish.
    assert_eq!(ask(&server, Path::Socket, "GET", "/sse/rated", &[], "").await.status, 200);
    // Only the admitted publishes were published.
    assert_eq!(server.stats().await["channels"]["rated"]["published"], 4);
    server.shutdown().await;

    // Where no policy checks keys, a made-up key per request buys no fresh allowance: the
    // address is the publisher.
    let server = TestServer::with(|c| c.access.publish_rate = herald::config::access::PublishRateConfig { per_second: 1, burst: 2 }).await;
    let statuses: Vec<u16> = futures_util::future::join_all((0..3).map(|i| {
        let req = http_client()
            .post(server.url("/sse/rated"))
            .header("content-type", "application/json")
            .header("x-api-key", format!("made-up-{i}"));
        async move { req.body(r#"{"data":"x"}"#).send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1, "{statuses:?}");
    server.shutdown().await;
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

/// Tokens pass the same gate on every path: a subscription, a user's own stream, a publish and
/// the statistics, each refused without a token (401, `WWW-Authenticate: Bearer`), with a
/// forged one (403), and served with a good one, over the socket path, hyper and HTTP/2.
#[tokio::test]
async fn tokens_pass_the_gate_on_every_path() {
    const SECRET: &str = "every-path-secret";
    let server = TestServer::with(|c| {
        c.access.subscribe.jwt = true;
        c.access.publish.jwt = true;
        c.access.stats.jwt = true;
        c.access.jwt.secret = SECRET.into();
    })
    .await;
    let sign = |key: &[u8]| {
        let claims = serde_json::json!({"sub": "alice", "exp": herald::hub::unix_now() + 600, "subscribe": "**", "publish": "**"});
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(key)).unwrap()
        )
    };
    let (good, forged) = (sign(SECRET.as_bytes()), sign(b"forged"));
    let requests: [(&str, &str, &'static str); 6] = [
        ("GET", "/sse/a", ""),
        ("GET", "/sse?channel=a&channel=b", ""),
        ("GET", "/sse", ""),
        ("POST", "/sse/a", r#"{"data":"x"}"#),
        ("POST", "/publish", r#"{"users":["alice"],"data":"x"}"#),
        ("GET", "/stats", ""),
    ];
    for path in [Path::Socket, Path::Hyper, Path::Http2] {
        for (method, target, body) in requests {
            let what = format!("{method} {target} over {path:?}");
            let none = ask(&server, path, method, target, &[], body).await;
            assert_eq!((none.status, none.www_authenticate.as_deref()), (401, Some("Bearer")), "{what} without a token");
            assert_eq!(ask(&server, path, method, target, &[("authorization", &forged)], body).await.status, 403, "{what} forged");
            assert_eq!(ask(&server, path, method, target, &[("authorization", &good)], body).await.status, 200, "{what} with the token");
        }
    }
    server.shutdown().await;
}
