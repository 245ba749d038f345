//! JSON Web Tokens: each key kind accepts its tokens and refuses the wrong ones with the exact
//! status (expired, not yet valid, wrong signature, wrong or `none` algorithm, the HMAC/RSA
//! confusion, wrong issuer or audience, a channel outside the claim), from every place a token
//! travels; key sets from a file and from a URL, rotated; a stream ends when its token expires;
//! tokens stay out of the logs.

mod support;

use herald::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::{Sse, TestServer, http};

const SECRET: &str = "a-test-secret-of-thirty-two-bytes!";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> u64 {
    herald::hub::unix_now()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None, claims)
}

fn rs256(kid: Option<&str>, claims: &Value) -> String {
    sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap(), kid, claims)
}

/// Claims of a token that may subscribe to `orders/*` and publish to `orders/1`, for an hour.
fn claims() -> Value {
    json!({"sub": "alice", "exp": now() + 3600, "subscribe": ["orders/*"], "publish": "orders/1"})
}

fn with(claims: Value, extra: Value) -> Value {
    let mut c = claims;
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn hmac_config(c: &mut Config) {
    c.access.subscribe.jwt = true;
    c.access.publish.jwt = true;
    c.access.jwt.secret = SECRET.into();
    c.access.jwt.leeway = std::time::Duration::ZERO;
}

struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
}

/// GETs `path` (a stream's first chunk is enough) or POSTs `body`.
async fn ask(server: &TestServer, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let mut req = http().request(method.parse().unwrap(), server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_owned());
    }
    let resp = tokio::time::timeout(support::WAIT, req.send()).await.expect("an answer in time").unwrap();
    let status = resp.status().as_u16();
    let www_authenticate = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let body = if status == 200 && method == "GET" {
        // An event stream: its preamble shows it opened.
        use futures_util::StreamExt;
        let first = resp.bytes_stream().next().await.unwrap().unwrap();
        String::from_utf8_lossy(&first).into_owned()
    } else {
        resp.text().await.unwrap()
    };
    Answer { status, www_authenticate, body }
}

async fn subscribe_status(server: &TestServer, path: &str, token: &str) -> Answer {
    ask(server, "GET", path, &[("authorization", &format!("Bearer {token}"))], None).await
}

#[tokio::test]
async fn hmac_tokens_are_checked_claim_by_claim() {
    let server = TestServer::with(hmac_config).await;
    let good = hs256(&claims());
    let open = subscribe_status(&server, "/sse/orders/7", &good).await;
    assert_eq!(open.status, 200, "{}", open.body);
    assert!(open.body.starts_with(": connected"), "{}", open.body);

    // No token: 401 asking for a bearer token.
    let missing = ask(&server, "GET", "/sse/orders/7", &[], None).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.www_authenticate.as_deref(), Some("Bearer"));

    let expired = hs256(&with(claims(), json!({"exp": now() - 60})));
    let early = hs256(&with(claims(), json!({"nbf": now() + 600})));
    let no_exp = hs256(&with(claims(), json!({"exp": null})));
    let other_secret = sign(Algorithm::HS256, &EncodingKey::from_secret(b"another secret entirely"), None, &claims());
    let hs512 = sign(Algorithm::HS512, &EncodingKey::from_secret(SECRET.as_bytes()), None, &claims());
    let mut tampered = good.clone();
    // A claim changed after signing: the payload is the middle part.
    let parts: Vec<&str> = good.split('.').collect();
    let payload = base64_url(&serde_json::to_vec(&with(claims(), json!({"subscribe": ["**"]}))).unwrap());
    tampered = tampered.replace(parts[1], &payload);
    let alg_none = format!("{}.{}.", base64_url(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let refusals = [
        (expired, "expired"),
        (early, "not valid yet"),
        (no_exp, "no exp"),
        (other_secret, "signature"),
        (tampered, "signature"),
        (hs512, "algorithm"),
        (alg_none, "malformed"),
        ("not-a-token".to_owned(), "malformed"),
    ];
    for (token, why) in refusals {
        let a = subscribe_status(&server, "/sse/orders/7", &token).await;
        assert_eq!(a.status, 403, "{why}: {}", a.body);
        assert!(a.body.contains(why), "{why}: {}", a.body);
        assert!(!a.body.contains(&token), "the token is echoed: {}", a.body);
    }

    // Channels outside the claim, alone or among allowed ones.
    let outside = subscribe_status(&server, "/sse/invoices/1", &good).await;
    assert_eq!(outside.status, 403);
    assert!(outside.body.contains("does not grant subscribing to `invoices/1`"), "{}", outside.body);
    // `orders/*` is one segment: `orders/7/lines` is outside.
    assert_eq!(subscribe_status(&server, "/sse?channel=orders/1&channel=orders/7/lines", &good).await.status, 403);
    assert_eq!(subscribe_status(&server, "/sse?channel=orders/1&channel=orders/2", &good).await.status, 200);

    // Publishing is held to the publish claim.
    let auth = format!("Bearer {good}");
    let ok = ask(&server, "POST", "/sse/orders/1", &[("authorization", &auth)], Some(r#"{"data":"x"}"#)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let denied = ask(&server, "POST", "/sse/orders/2", &[("authorization", &auth)], Some(r#"{"data":"x"}"#)).await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(denied.body.contains("does not grant publishing to `orders/2`"), "{}", denied.body);
    let batch = r#"[{"channel":"orders/1","data":"a"},{"channel":"orders/3","data":"b"}]"#;
    assert_eq!(ask(&server, "POST", "/publish", &[("authorization", &auth)], Some(batch)).await.status, 403);
    assert_eq!(ask(&server, "POST", "/sse/orders/1", &[], Some(r#"{"data":"x"}"#)).await.status, 401);
    server.shutdown().await;
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn a_token_travels_in_a_header_a_cookie_or_the_query() {
    let server = TestServer::with(|c| {
        hmac_config(c);
        c.access.jwt.header = "X-Access-Token".into();
        c.access.jwt.cookie = "herald_token".into();
    })
    .await;
    let token = hs256(&claims());
    let cookie = format!("theme=dark; herald_token={token}");
    for headers in [vec![("x-access-token", token.as_str())], vec![("cookie", cookie.as_str())]] {
        let a = ask(&server, "GET", "/sse/orders/1", &headers, None).await;
        assert_eq!(a.status, 200, "{headers:?}: {}", a.body);
    }
    let a = ask(&server, "GET", &format!("/sse/orders/1?access_token={token}&lastEventId="), &[], None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A text publish with the token in its query: the parameter is the gate's, not an unknown one.
    let resp = http()
        .post(server.url(&format!("/sse/orders/1?event=note&access_token={token}")))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // Authorization comes first: a wrong bearer is refused even beside a good cookie.
    let a = ask(&server, "GET", "/sse/orders/1", &[("authorization", "Bearer x.y.z"), ("cookie", &cookie)], None).await;
    assert_eq!(a.status, 403);
    // The 401 names where a token may be sent.
    let a = ask(&server, "GET", "/sse/orders/1", &[], None).await;
    assert_eq!(a.status, 401);
    for place in ["Authorization: Bearer", "X-Access-Token", "herald_token cookie", "access_token query parameter"] {
        assert!(a.body.to_lowercase().contains(&place.to_lowercase()), "{place}: {}", a.body);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn public_keys_verify_rsa_ec_and_ed25519_tokens_and_nothing_else() {
    let server = TestServer::with(|c| {
        c.access.subscribe.jwt = true;
        c.access.jwt.algorithms = vec!["RS256".into(), "PS256".into()];
        c.access.jwt.public_key_file = Some(fixture("rsa_public.pem"));
    })
    .await;
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap();
    let a = subscribe_status(&server, "/sse/orders/1", &rs256(None, &claims())).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &sign(Algorithm::PS256, &rsa, None, &claims())).await.status, 200);
    // Algorithms not configured: RS512, and HS256 keyed with the public key's PEM (the classic
    // confusion: a verifier that takes the token's word for its algorithm would accept it).
    let rs512 = sign(Algorithm::RS512, &rsa, None, &claims());
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&pem("rsa_public.pem")), None, &claims());
    let other_rsa = sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(&pem("rsa2_private.pem")).unwrap(), None, &claims());
    for (token, why) in [(rs512, "algorithm"), (confused, "algorithm"), (other_rsa, "signature")] {
        let a = subscribe_status(&server, "/sse/orders/1", &token).await;
        assert_eq!(a.status, 403, "{why}: {}", a.body);
        assert!(a.body.contains(why), "{why}: {}", a.body);
    }
    server.shutdown().await;

    // With an HMAC secret beside the RSA key, the confused token meets the secret, not the PEM.
    let server = TestServer::with(|c| {
        c.access.subscribe.jwt = true;
        c.access.jwt.algorithms = vec!["HS256".into(), "RS256".into()];
        c.access.jwt.secret = SECRET.into();
        c.access.jwt.public_key_file = Some(fixture("rsa_public.pem"));
    })
    .await;
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&pem("rsa_public.pem")), None, &claims());
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &confused).await.status, 403);
    for token in [hs256(&claims()), rs256(None, &claims())] {
        let a = subscribe_status(&server, "/sse/orders/1", &token).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    server.shutdown().await;

    for (alg, public, private) in
        [(Algorithm::ES256, "ec_public.pem", "ec_private.pem"), (Algorithm::EdDSA, "ed_public.pem", "ed_private.pem")]
    {
        let server = TestServer::with(|c| {
            c.access.subscribe.jwt = true;
            c.access.jwt.algorithms = vec![format!("{alg:?}")];
            c.access.jwt.public_key_file = Some(fixture(public));
        })
        .await;
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem(private)).unwrap(),
            _ => EncodingKey::from_ed_pem(&pem(private)).unwrap(),
        };
        let a = subscribe_status(&server, "/sse/orders/1", &sign(alg, &key, None, &claims())).await;
        assert_eq!(a.status, 200, "{alg:?}: {}", a.body);
        assert_eq!(subscribe_status(&server, "/sse/orders/1", &rs256(None, &claims())).await.status, 403, "{alg:?}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let server = TestServer::with(|c| {
        hmac_config(c);
        c.access.jwt.issuer = vec!["https://id.example.com".into()];
        c.access.jwt.audience = vec!["herald".into()];
    })
    .await;
    let base = with(claims(), json!({"iss": "https://id.example.com", "aud": ["other", "herald"]}));
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &hs256(&base)).await.status, 200);
    for (changed, why) in [
        (json!({"iss": "https://evil.example.com"}), "issuer"),
        (json!({"aud": "other"}), "audience"),
        (json!({"iss": null}), "no iss"),
        (json!({"aud": null}), "no aud"),
    ] {
        let a = subscribe_status(&server, "/sse/orders/1", &hs256(&with(base.clone(), changed))).await;
        assert_eq!(a.status, 403, "{why}: {}", a.body);
        assert!(a.body.contains(why), "{why}: {}", a.body);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_key_set_file_serves_its_keys_by_id_and_never_a_symmetric_one() {
    let server = TestServer::with(|c| {
        c.access.subscribe.jwt = true;
        c.access.jwt.algorithms = vec!["RS256".into(), "ES256".into()];
        c.access.jwt.jwks_file = Some(fixture("jwks.json"));
    })
    .await;
    let ec = EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap();
    for token in [rs256(Some("rsa-1"), &claims()), rs256(None, &claims()), sign(Algorithm::ES256, &ec, Some("ec-1"), &claims())] {
        let a = subscribe_status(&server, "/sse/orders/1", &token).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // The RSA key under the EC key's id, an unknown id, and the set's `oct` key.
    let wrong_kid = subscribe_status(&server, "/sse/orders/1", &rs256(Some("ec-1"), &claims())).await;
    assert_eq!(wrong_kid.status, 403, "{}", wrong_kid.body);
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &rs256(Some("nope"), &claims())).await.status, 403);
    let oct = sign(Algorithm::HS256, &EncodingKey::from_secret(b"secret"), Some("oct-1"), &claims());
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &oct).await.status, 403);
    server.shutdown().await;
}

/// A JWKS endpoint of the test's own: serves `keys`, counts its requests, and can be down.
struct KeyServer {
    url: String,
    keys: Arc<parking_lot::Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
}

async fn key_server(initial: Option<&str>) -> KeyServer {
    let keys = Arc::new(parking_lot::Mutex::new(initial.map(|f| std::fs::read_to_string(fixture(f)).unwrap())));
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get({
            let (keys, hits) = (keys.clone(), hits.clone());
            move || async move {
                hits.fetch_add(1, Ordering::SeqCst);
                match keys.lock().clone() {
                    Some(body) => (axum::http::StatusCode::OK, body),
                    None => (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new()),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    KeyServer { url, keys, hits }
}

#[tokio::test]
async fn a_key_set_url_is_fetched_again_for_a_new_key_id_at_most_once_a_minute() {
    let ks = key_server(Some("jwks.json")).await;
    let server = TestServer::with(|c| {
        c.access.subscribe.jwt = true;
        c.access.jwt.algorithms = vec!["RS256".into()];
        c.access.jwt.jwks_url = ks.url.clone();
    })
    .await;
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &rs256(Some("rsa-1"), &claims())).await.status, 200);
    let fetched = ks.hits.load(Ordering::SeqCst);
    assert!(fetched >= 1);
    // The provider rotates to a new key: a token naming it fetches the set again.
    *ks.keys.lock() = Some(std::fs::read_to_string(fixture("jwks_rotated.json")).unwrap());
    let rotated = sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(&pem("rsa2_private.pem")).unwrap(), Some("rsa-2"), &claims());
    let a = subscribe_status(&server, "/sse/orders/1", &rotated).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let after_rotation = ks.hits.load(Ordering::SeqCst);
    assert_eq!(after_rotation, fetched + 1);
    // Made-up key ids within the minute fetch nothing more.
    for i in 0..5 {
        let a = subscribe_status(&server, "/sse/orders/1", &rs256(Some(&format!("made-up-{i}")), &claims())).await;
        assert_eq!(a.status, 403);
    }
    assert_eq!(ks.hits.load(Ordering::SeqCst), after_rotation);
    server.shutdown().await;
}

#[tokio::test]
async fn a_key_set_that_cannot_be_fetched_lets_nobody_in_with_503() {
    let ks = key_server(None).await;
    let server = TestServer::with(|c| {
        c.access.subscribe.jwt = true;
        c.access.jwt.algorithms = vec!["RS256".into()];
        c.access.jwt.jwks_url = ks.url.clone();
    })
    .await;
    let a = subscribe_status(&server, "/sse/orders/1", &rs256(Some("rsa-1"), &claims())).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body.contains("cannot be fetched"), "{}", a.body);
    server.shutdown().await;
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let server = TestServer::with(|c| {
        hmac_config(c);
        c.access.publish.jwt = false;
        c.access.jwt.require_exp = false;
    })
    .await;
    let expiring = hs256(&with(claims(), json!({"exp": now() + 2})));
    let lasting = hs256(&with(claims(), json!({"exp": null})));
    let url = server.url("/sse/orders/1");
    let mut ending = Sse::open_with(&url, &[("authorization", &format!("Bearer {expiring}"))]).await;
    let mut staying = Sse::open_with(&url, &[("authorization", &format!("Bearer {lasting}"))]).await;
    assert_eq!((ending.status.as_u16(), staying.status.as_u16()), (200, 200));
    support::subscribers(&server, "orders/1", 2).await;
    server.publish_data("orders/1", "before").await;
    assert_eq!(ending.data(1).await, ["before"]);
    assert_eq!(staying.data(1).await, ["before"]);
    // Within the wait, the expiring stream ends by itself; the other goes on.
    ending.expect_end().await;
    server.publish_data("orders/1", "after").await;
    assert_eq!(staying.data(1).await, ["after"]);
    // Reconnecting with the expired token is refused.
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &expiring).await.status, 403);
    server.shutdown().await;
}

#[tokio::test]
async fn with_end_stream_at_expiry_off_a_stream_outlives_its_token() {
    let server = TestServer::with(|c| {
        hmac_config(c);
        c.access.publish.jwt = false;
        c.access.jwt.end_stream_at_expiry = false;
    })
    .await;
    // Two seconds of validity (whole seconds, no leeway): enough to subscribe on a loaded
    // machine, where one was not.
    let exp = now() + 2;
    let expiring = hs256(&with(claims(), json!({"exp": exp})));
    let mut stream = Sse::open_with(&server.url("/sse/orders/1"), &[("authorization", &format!("Bearer {expiring}"))]).await;
    assert_eq!(stream.status, 200);
    support::subscribers(&server, "orders/1", 1).await;
    while now() <= exp + 1 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.publish_data("orders/1", "later").await;
    assert_eq!(stream.data(1).await, ["later"]);
    server.shutdown().await;
}

#[tokio::test]
async fn statistics_can_require_a_token() {
    let server = TestServer::with(|c| {
        c.access.stats.jwt = true;
        c.access.jwt.secret = SECRET.into();
    })
    .await;
    assert_eq!(ask(&server, "GET", "/stats", &[], None).await.status, 401);
    let a = ask(&server, "GET", "/stats", &[("authorization", &format!("Bearer {}", hs256(&claims())))], None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    server.shutdown().await;
}

#[tokio::test]
async fn per_channel_policies_may_want_a_token_where_others_do_not() {
    let server = TestServer::with(|c| {
        c.access.jwt.secret = SECRET.into();
        c.channels.push(herald::config::ChannelConfig {
            pattern: "private/**".into(),
            access: Some(herald::config::ChannelAccessConfig {
                subscribe: Some(herald::config::access::PolicyConfig { jwt: true, ..Default::default() }),
                publish: None,
            }),
            ..Default::default()
        });
        c.access.jwt.claims.subscribe = "/herald/channels".into();
    })
    .await;
    assert_eq!(ask(&server, "GET", "/sse/public/1", &[], None).await.status, 200);
    assert_eq!(ask(&server, "GET", "/sse?channel=public/1&channel=private/a", &[], None).await.status, 401);
    let token = hs256(&json!({"exp": now() + 60, "herald": {"channels": ["private/**"]}}));
    let a = subscribe_status(&server, "/sse?channel=public/1&channel=private/a/b", &token).await;
    assert_eq!(a.status, 200, "{}", a.body);
    server.shutdown().await;
}

#[test]
fn start_up_names_what_is_wrong_with_the_token_settings() {
    type Tweak = Box<dyn Fn(&mut Config)>;
    let cases: Vec<(Tweak, &str)> = vec![
        (Box::new(|c| c.access.subscribe.jwt = true), "access.jwt.secret"),
        (
            Box::new(|c| {
                c.access.subscribe.jwt = true;
                c.access.jwt.secret = "s".into();
                c.access.jwt.algorithms = vec!["none".into()];
            }),
            "access.jwt.algorithms",
        ),
        (
            Box::new(|c| {
                c.access.subscribe.jwt = true;
                c.access.jwt.secret = "s".into();
                c.access.jwt.algorithms = vec!["RS256".into()];
            }),
            "access.jwt.algorithms",
        ),
        (
            Box::new(|c| {
                c.access.publish.jwt = true;
                c.access.jwt.secret_env = "HERALD_TEST_UNSET_JWT_SECRET".into();
            }),
            "access.jwt.secret_env",
        ),
        (
            Box::new(|c| {
                c.access.subscribe.jwt = true;
                c.access.jwt.algorithms = vec!["ES256".into()];
                c.access.jwt.public_key_file = Some(fixture("rsa_public.pem"));
            }),
            "access.jwt.public_key_file",
        ),
        (
            Box::new(|c| {
                c.access.subscribe.jwt = true;
                c.access.jwt.algorithms = vec!["RS256".into()];
                c.access.jwt.jwks_file = Some(fixture("missing.json"));
            }),
            "access.jwt.jwks_file",
        ),
        (
            Box::new(|c| {
                c.access.subscribe.jwt = true;
                c.access.jwt.secret = "s".into();
                c.access.jwt.claims.user = "user/id".into();
            }),
            "access.jwt.claims.user",
        ),
        (
            Box::new(|c| {
                c.access.subscribe.jwt = true;
                c.access.jwt.secret = "s".into();
                c.access.jwt.leeway = std::time::Duration::from_secs(7200);
            }),
            "access.jwt.leeway",
        ),
        // Keys without a policy that wants them still serve users' own streams: checked too.
        (
            Box::new(|c| {
                c.access.jwt.secret = "s".into();
                c.access.jwt.algorithms = Vec::new();
            }),
            "access.jwt.algorithms",
        ),
    ];
    for (tweak, key) in cases {
        let mut config = Config::default();
        tweak(&mut config);
        let err = config.validate().and_then(|()| herald::access::Gate::new(&config).map(drop)).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// The real binary at debug level: a token sent in the query, in a header and in a cookie, good
/// and bad, subscribing and publishing, never shows in what it logs.
#[tokio::test]
async fn tokens_never_reach_the_log_even_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[history]\nstore = \"memory\"\n[access.subscribe]\njwt = true\n[access.publish]\njwt = true\n[access.jwt]\nsecret = \"{SECRET}\"\ncookie = \"herald_token\"\n"
        ),
    )
    .unwrap();
    let served = support::process::Served::start_with(dir.path(), &["--config", config.to_str().unwrap(), "--log-level", "debug"]);
    let good = hs256(&claims());
    let expired = hs256(&with(claims(), json!({"exp": now() - 100})));
    let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(b"forged"), None, &claims());
    let client = http();
    for token in [&good, &expired, &forged] {
        for url in [format!("/sse/orders/1?access_token={token}"), format!("/sse/invoices/1?access_token={token}")] {
            let resp = client.get(served.url(&url)).send().await.unwrap();
            drop(resp);
        }
        let resp = client.get(served.url("/sse/orders/2")).header("cookie", format!("herald_token={token}")).send().await.unwrap();
        drop(resp);
        let resp = client
            .post(served.url(&format!("/sse/orders/1?access_token={token}&event=x")))
            .header("content-type", "text/plain")
            .body("data")
            .send()
            .await
            .unwrap();
        let _ = resp.text().await;
    }
    // The requests were served and logged about at debug level.
    support::eventually(async || served.log.lock().unwrap().iter().any(|l| l.contains("request refused by access control"))).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = served.log.lock().unwrap().join("\n");
    assert!(log.contains("event stream opened"), "{log}");
    for token in [&good, &expired, &forged] {
        // Any of its three parts would be a leak; the signature is the secret-bearing one.
        for part in token.split('.') {
            assert!(!log.contains(part), "a token part is in the log:\n{log}");
        }
    }
}

#[tokio::test]
async fn each_user_holds_at_most_max_streams_per_user() {
    let server = TestServer::with(|c| {
        hmac_config(c);
        c.access.max_streams_per_user = 2;
    })
    .await;
    let alice = format!("Bearer {}", hs256(&claims()));
    // Another token of the same user counts for the same user.
    let alice_again = format!("Bearer {}", hs256(&with(claims(), json!({"jti": "second"}))));
    let bob = format!("Bearer {}", hs256(&with(claims(), json!({"sub": "bob"}))));
    let url = server.url("/sse/orders/1");
    let first = Sse::open_with(&url, &[("authorization", &alice)]).await;
    let _second = Sse::open_with(&url, &[("authorization", &alice_again)]).await;
    assert_eq!((first.status.as_u16(), _second.status.as_u16()), (200, 200));
    let third = ask(&server, "GET", "/sse/orders/1", &[("authorization", &alice)], None).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(third.body.contains("alice has 2 event streams open") && third.body.contains("max_streams_per_user"), "{}", third.body);
    assert_eq!(ask(&server, "GET", "/sse/orders/1", &[("authorization", &bob)], None).await.status, 200);
    // A stream that ends gives its slot back.
    drop(first);
    support::eventually(async || ask(&server, "GET", "/sse/orders/1", &[("authorization", &alice)], None).await.status == 200).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_key_set_url_is_refreshed_every_jwks_refresh() {
    let ks = key_server(Some("jwks.json")).await;
    let server = TestServer::with(|c| {
        c.access.subscribe.jwt = true;
        c.access.jwt.algorithms = vec!["RS256".into()];
        c.access.jwt.jwks_url = ks.url.clone();
        c.access.jwt.jwks_refresh = std::time::Duration::from_secs(1);
    })
    .await;
    let token = rs256(Some("rsa-1"), &claims());
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &token).await.status, 200);
    let fetched = ks.hits.load(Ordering::SeqCst);
    // The provider drops the key; once the set is older than jwks_refresh, a request fetches it
    // again in the background (it is still served with the set in hand) and the key is gone.
    *ks.keys.lock() = Some(std::fs::read_to_string(fixture("jwks_rotated.json")).unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    // A token not seen before, so that the verifier's memory of the first does not answer.
    let fresh = rs256(Some("rsa-1"), &with(claims(), json!({"jti": "fresh"})));
    assert_eq!(subscribe_status(&server, "/sse/orders/1", &fresh).await.status, 200);
    support::eventually(async || ks.hits.load(Ordering::SeqCst) > fetched).await;
    let after = rs256(Some("rsa-1"), &with(claims(), json!({"jti": "after"})));
    support::eventually(async || subscribe_status(&server, "/sse/orders/1", &after).await.status == 403).await;
    server.shutdown().await;
}

/// Addressing users is granted by a token's publish claim naming `#users` (or `**`), never by
/// a claim for channels alone.
#[tokio::test]
async fn a_token_addresses_users_only_when_its_publish_claim_grants_it() {
    let server = TestServer::with(hmac_config).await;
    let for_users = |claim: Value| format!("Bearer {}", hs256(&with(claims(), json!({ "publish": claim }))));
    let body = Some(r#"{"users":["bob"],"data":"x"}"#);
    let channels_only = ask(&server, "POST", "/publish", &[("authorization", &for_users(json!("orders/*")))], body).await;
    assert_eq!(channels_only.status, 403, "{}", channels_only.body);
    assert!(channels_only.body.contains("does not grant publishing to `#users`"), "{}", channels_only.body);
    for claim in [json!(["orders/*", "#users"]), json!("**")] {
        let a = ask(&server, "POST", "/publish", &[("authorization", &for_users(claim.clone()))], body).await;
        assert_eq!(a.status, 200, "{claim}: {}", a.body);
    }
    // With a channel too, both the channel and `#users` must be granted.
    let scoped = Some(r#"{"users":["bob"],"data":"x"}"#);
    let a = ask(&server, "POST", "/sse/orders/1", &[("authorization", &for_users(json!(["#users"])))], scoped).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = ask(&server, "POST", "/sse/orders/1", &[("authorization", &for_users(json!(["#users", "orders/*"])))], scoped).await;
    assert_eq!(a.status, 200, "{}", a.body);
    server.shutdown().await;
}
