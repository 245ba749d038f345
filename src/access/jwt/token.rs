//! Where a request carries its token. A browser's `EventSource` cannot set headers, so besides
//! `Authorization: Bearer` a token may come in a cookie (sent with `withCredentials`) or in a
//! query parameter; proxies in front of other systems pass it in a header of their own.

use crate::config::access::JwtConfig;
use http::{HeaderMap, HeaderName};
use std::borrow::Cow;

pub struct Sources {
    header: Option<HeaderName>,
    cookie: Option<String>,
    query: Option<String>,
}

impl Sources {
    /// From validated configuration.
    pub fn new(config: &JwtConfig) -> Self {
        Sources {
            header: (!config.header.is_empty()).then(|| HeaderName::from_bytes(config.header.as_bytes()).expect("validated header name")),
            cookie: (!config.cookie.is_empty()).then(|| config.cookie.clone()),
            query: (!config.query.is_empty()).then(|| config.query.clone()),
        }
    }

    /// The token of a request: `Authorization: Bearer`, else the header, the cookie, the query
    /// parameter, the first one present.
    pub fn find<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, str>> {
        if let Some(t) = headers.get(http::header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes())) {
            return Some(Cow::Borrowed(t));
        }
        if let Some(t) = self.header.as_ref().and_then(|h| headers.get(h)).and_then(|v| v.to_str().ok()).map(str::trim) {
            return (!t.is_empty()).then_some(Cow::Borrowed(t));
        }
        if let Some(t) = self.cookie.as_deref().and_then(|name| cookie(headers, name)) {
            return Some(Cow::Borrowed(t));
        }
        let name = self.query.as_deref()?;
        form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v).filter(|v| !v.is_empty())
    }

    /// Where a token may be sent, for the 401 that asks for one.
    pub fn describe(&self) -> String {
        let mut places = vec!["Authorization: Bearer".to_owned()];
        if let Some(h) = &self.header {
            places.push(format!("the {h} header"));
        }
        if let Some(c) = &self.cookie {
            places.push(format!("the {c} cookie"));
        }
        if let Some(q) = &self.query {
            places.push(format!("the {q} query parameter"));
        }
        places.join(", ")
    }
}

fn bearer(value: &[u8]) -> Option<&str> {
    let v = std::str::from_utf8(value).ok()?;
    let t = v.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer "))?;
    let token = v[t.len()..].trim();
    (!token.is_empty()).then_some(token)
}

/// The value of cookie `name` (RFC 6265: `a=1; b=2`, in one or several `Cookie` headers).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        let config = JwtConfig { header: "X-Access-Token".into(), cookie: "herald_token".into(), ..JwtConfig::default() };
        Sources::new(&config)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_first_place_holding_a_token_wins() {
        let s = sources();
        let all = headers(&[("authorization", "Bearer a.b.c"), ("x-access-token", "d.e.f"), ("cookie", "herald_token=g.h.i")]);
        assert_eq!(s.find(&all, Some("access_token=j.k.l")).as_deref(), Some("a.b.c"));
        let no_auth = headers(&[("x-access-token", " d.e.f "), ("cookie", "herald_token=g.h.i")]);
        assert_eq!(s.find(&no_auth, None).as_deref(), Some("d.e.f"));
        let cookies = headers(&[("cookie", "other=1; herald_token=\"g.h.i\""), ("cookie", "x=2")]);
        assert_eq!(s.find(&cookies, None).as_deref(), Some("g.h.i"));
        assert_eq!(s.find(&HeaderMap::new(), Some("a=1&access_token=j.k%2El")).as_deref(), Some("j.k.l"));
    }

    #[test]
    fn empty_and_foreign_credentials_are_no_token() {
        let s = sources();
        for h in [
            headers(&[("authorization", "Basic dTpw")]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("x-access-token", "")]),
            headers(&[("cookie", "herald_token=; other=x")]),
            headers(&[("cookie", "herald_tokenx=a")]),
        ] {
            assert_eq!(s.find(&h, Some("access_token=")), None, "{h:?}");
        }
        let off = Sources::new(&JwtConfig { query: String::new(), ..JwtConfig::default() });
        assert_eq!(off.find(&HeaderMap::new(), Some("access_token=a.b.c")), None);
    }
}
