//! `http_root`: the public routes under a path prefix (oCIS's `SSE_HTTP_ROOT`), for a hub that
//! shares a host name with other services behind one proxy. The prefix is taken off each
//! request's path where the connection is served (both the socket fast path and hyper's), so
//! routing, access rules and logs see the same paths whatever the prefix.

/// The path the client sent, on a request outside the root (answered 404 by the fallback).
#[derive(Clone)]
pub struct OutsideRoot(pub Box<str>);

/// A path no route has, given to requests outside the root.
const OUTSIDE: &str = "/.outside-http-root";

/// `path` with `root` taken off (`/events/sse/a` under `/events` is `/sse/a`), or `None` when
/// it is not under it. An empty root takes nothing off.
pub fn within<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root.is_empty() {
        return Some(path);
    }
    match path.strip_prefix(root)? {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// A request target (path and query, as an HTTP/1 request line has it) with `root` taken
/// off, when it is under the root and more than the root itself; a slice of `target`.
pub fn within_target<'a>(target: &'a str, root: &str) -> Option<&'a str> {
    if root.is_empty() {
        return Some(target);
    }
    let rest = target.strip_prefix(root)?;
    rest.starts_with('/').then_some(rest)
}

/// Takes `root` off the request's path; a request outside it is routed to nothing and marked.
pub fn strip<B>(req: &mut http::Request<B>, root: &str) {
    if root.is_empty() {
        return;
    }
    let uri = req.uri();
    let path = uri.path();
    let (new_path, outside) = match within(path, root) {
        Some(rest) => (rest.to_owned(), None),
        None => (OUTSIDE.to_owned(), Some(OutsideRoot(path.into()))),
    };
    let path_and_query = match uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(stripped) = http::Uri::from_parts(parts) {
        *req.uri_mut() = stripped;
    }
    if let Some(outside) = outside {
        req.extensions_mut().insert(outside);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_taken_off_paths_under_it_only() {
        assert_eq!(within("/sse/a", ""), Some("/sse/a"));
        assert_eq!(within("/events/sse/a", "/events"), Some("/sse/a"));
        assert_eq!(within("/events", "/events"), Some("/"));
        assert_eq!(within("/events/", "/events"), Some("/"));
        assert_eq!(within("/eventsx/sse/a", "/events"), None, "a longer segment is not under it");
        assert_eq!(within("/sse/a", "/events"), None);
        assert_eq!(within_target("/events/sse?channel=a", "/events"), Some("/sse?channel=a"));
        assert_eq!(within_target("/eventsx/sse", "/events"), None);
        assert_eq!(within_target("/sse/a", ""), Some("/sse/a"));
        let mut req = http::Request::get("/events/sse/a?lastEventId=3").body(()).unwrap();
        strip(&mut req, "/events");
        assert_eq!(req.uri().to_string(), "/sse/a?lastEventId=3");
        assert!(req.extensions().get::<OutsideRoot>().is_none());
        let mut req = http::Request::get("/sse/a").body(()).unwrap();
        strip(&mut req, "/events");
        assert_eq!(req.uri().path(), OUTSIDE);
        assert_eq!(&*req.extensions().get::<OutsideRoot>().unwrap().0, "/sse/a");
    }
}
