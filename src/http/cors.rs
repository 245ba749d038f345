//! CORS, globally and per channel.
//!
//! Each channel carries the policy of its `[[channels]]` entry (or the global one). A request is
//! allowed from an origin only if every channel it names allows that origin.

use super::AppState;
use super::error::ApiError;
use crate::config::CorsConfig;
use crate::config::pattern;
use crate::hub::rules::RuleTable;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use std::sync::Arc;

/// Each channel's policy: that of its first matching `[[channels]]` entry, or the global one
/// (also used where a request names no channel).
pub fn rules(config: &crate::config::Config) -> RuleTable<Arc<CorsPolicy>> {
    let global = Arc::new(CorsPolicy::new(&config.cors));
    let rules = config
        .channels
        .iter()
        .map(|c| (c.pattern.clone(), c.cors.as_ref().map_or_else(|| global.clone(), |cors| Arc::new(CorsPolicy::new(cors)))))
        .collect();
    RuleTable::new(rules, global)
}

#[derive(Debug)]
pub struct CorsPolicy {
    any_origin: bool,
    origins: Vec<String>,
    credentials: bool,
    methods: Vec<Method>,
    methods_header: HeaderValue,
    headers: Vec<String>,
    headers_header: HeaderValue,
    max_age: HeaderValue,
}

impl CorsPolicy {
    pub fn new(c: &CorsConfig) -> Self {
        let join = |v: &[String]| HeaderValue::from_str(&v.join(", ")).expect("validated header list");
        CorsPolicy {
            // With credentials a wildcard would hand every site the user's cookies: only the
            // listed origins are reflected then.
            any_origin: !c.allow_credentials && c.allowed_origins.iter().any(|o| o == "*"),
            origins: c.allowed_origins.iter().filter(|o| *o != "*").cloned().collect(),
            credentials: c.allow_credentials,
            methods: c.allowed_methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect(),
            methods_header: join(&c.allowed_methods),
            headers: c.allowed_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            headers_header: join(&c.allowed_headers),
            max_age: HeaderValue::from(c.max_age.as_secs()),
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let listed = origin.to_str().is_ok_and(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if listed {
            Some(origin.clone())
        } else if self.any_origin {
            Some(HeaderValue::from_static("*"))
        } else {
            None
        }
    }
}

/// The policies that apply to a request: one per channel it names, or the global one.
fn policies(state: &AppState, req: &Request) -> Vec<Arc<CorsPolicy>> {
    let path = req.uri().path();
    let names: Vec<String> = if let Some(name) = path.strip_prefix("/sse/") {
        vec![percent_decode(name)]
    } else if path == "/sse" {
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k == "channel")
            .map(|(_, v)| v.into_owned())
            .collect()
    } else {
        Vec::new()
    };
    let mut out: Vec<Arc<CorsPolicy>> =
        names.iter().filter(|n| pattern::validate_channel(n, usize::MAX).is_ok()).map(|n| state.cors.resolve(n).clone()).collect();
    if out.is_empty() {
        out.push(state.cors.default().clone());
    }
    out
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The middleware: answers preflights, and adds CORS headers to responses for allowed origins.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let policies = policies(&state, &req);
    let allowed = policies.iter().map(|p| p.allow_origin(&origin)).collect::<Option<Vec<_>>>().and_then(|v| v.into_iter().next());
    let policy = policies[0].clone();
    if req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return preflight(&policy, allowed, req.headers());
    }
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(allow) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if policy.credentials {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
    resp
}

fn preflight(policy: &CorsPolicy, allowed: Option<HeaderValue>, req: &HeaderMap) -> Response {
    let Some(allow_origin) = allowed else {
        return ApiError::new(StatusCode::FORBIDDEN, "origin not allowed by CORS configuration").into_response();
    };
    let method_ok = req
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .is_some_and(|m| policy.methods.contains(&m));
    if !method_ok {
        return ApiError::new(StatusCode::FORBIDDEN, "method not allowed by CORS configuration").into_response();
    }
    if let Some(requested) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS).and_then(|h| h.to_str().ok()) {
        let refused = requested.split(',').map(|h| h.trim().to_ascii_lowercase()).find(|h| !h.is_empty() && !policy.headers.contains(h));
        if let Some(h) = refused {
            return ApiError::new(StatusCode::FORBIDDEN, format!("header `{h}` not allowed by CORS configuration")).into_response();
        }
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, policy.methods_header.clone());
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, policy.headers_header.clone());
    h.insert(header::ACCESS_CONTROL_MAX_AGE, policy.max_age.clone());
    if policy.credentials {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"));
    resp
}
