//! From a broker message to an event: its channels (from templates over the routing key,
//! subject or topic, or from a field), the users it is addressed to, its type, id and data.
//! Fields are JSON pointers read over the message's own text, so a field's JSON value is passed
//! on as written (key order and numbers' digits kept), like an HTTP publisher's `data`.

use crate::config::sources::{MapConfig, MessageFormat, SourceConfig};
use crate::event::Draft;
use crate::hub::Submission;
use crate::json::{EventInput, data_text, string_text};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;

/// What a source hands the mapping: where the message was published and what it holds.
pub struct Message<'a> {
    /// The routing key, subject or topic.
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// The type the message already has (an upstream SSE event's), kept unless the map sets one.
    pub event: Option<&'a str>,
}

pub struct Mapper {
    source: String,
    map: MapConfig,
    templates: Vec<String>,
    /// The templates were configured (not the default): events addressed to users go to those
    /// channels; with the default, to the users' every stream.
    templates_set: bool,
    /// What splits a subject into `{1}`…`{9}`: `/` for MQTT topics; else `.` (or `/` for a
    /// subject with `/` and no `.`).
    levels: Option<char>,
}

impl Mapper {
    pub fn new(config: &SourceConfig) -> Mapper {
        Mapper {
            source: config.name.clone(),
            map: config.map.clone(),
            templates: config.channel_templates(),
            templates_set: !config.map.channels.is_empty(),
            levels: (config.kind == crate::config::sources::SourceKind::Mqtt).then_some('/'),
        }
    }

    /// The event the message stands for, or why it cannot be one (the message is then rejected,
    /// never retried).
    pub fn map(&self, msg: &Message<'_>) -> Result<Submission, String> {
        let text = std::str::from_utf8(msg.payload).map_err(|e| format!("the message is not UTF-8: {e}"))?;
        let format = match self.map.format {
            MessageFormat::Auto if looks_like_herald_event(text) => MessageFormat::Herald,
            MessageFormat::Auto if self.map.names_fields() => MessageFormat::Json,
            MessageFormat::Auto => MessageFormat::Raw,
            f => f,
        };
        match format {
            MessageFormat::Herald => self.herald_event(msg, text),
            MessageFormat::Json => self.json_fields(msg, text),
            _ => Ok(Submission {
                channels: self.channels(msg, false)?,
                users: Vec::new(),
                draft: Draft { data: text.to_owned(), event: self.event(msg), ..Draft::default() },
            }),
        }
    }

    fn herald_event(&self, msg: &Message<'_>, text: &str) -> Result<Submission, String> {
        let mut input: EventInput = serde_json::from_str(text).map_err(|e| format!("not a Herald event: {e}"))?;
        let mut draft = input.take_draft()?;
        if draft.event.is_none() {
            draft.event = self.event(msg);
        }
        let users = input.users.take().unwrap_or_default();
        let named = match (input.channel, input.channels, input.path) {
            (Some(_), Some(_), _) => return Err("name either `channel` or `channels`, not both".into()),
            (Some(c), None, _) | (None, None, Some(c)) => vec![c],
            (None, Some(cs), _) => cs,
            (None, None, None) => Vec::new(),
        };
        let channels = if named.is_empty() { self.channels(msg, !users.is_empty())? } else { named };
        Ok(Submission { channels, users, draft })
    }

    fn json_fields(&self, msg: &Message<'_>, text: &str) -> Result<Submission, String> {
        let doc: &RawValue = serde_json::from_str(text).map_err(|e| format!("the message is not JSON: {e}"))?;
        let field = |name: &str, pointer: &Option<String>| -> Result<Option<&RawValue>, String> {
            match pointer {
                None => Ok(None),
                Some(p) => pointer_raw(doc, p).map(Some).ok_or_else(|| format!("the message has no `{p}` ({name})")),
            }
        };
        let users = match field("map.users_field", &self.map.users_field)? {
            Some(v) => strings(v).map_err(|e| format!("{}: {e}", self.map.users_field.as_deref().unwrap_or_default()))?,
            None => Vec::new(),
        };
        let channels = match field("map.channel_field", &self.map.channel_field)? {
            Some(v) => strings(v).map_err(|e| format!("{}: {e}", self.map.channel_field.as_deref().unwrap_or_default()))?,
            None => self.channels(msg, !users.is_empty())?,
        };
        let event = match field("map.event_field", &self.map.event_field)? {
            Some(v) => Some(one_string(v).map_err(|e| format!("map.event_field: {e}"))?),
            None => self.event(msg),
        };
        let id = match field("map.id_field", &self.map.id_field)? {
            Some(v) if v.get().starts_with('"') => Some(string_text(v.get())),
            // A numeric id keeps its digits.
            Some(v) if v.get().starts_with(|c: char| c == '-' || c.is_ascii_digit()) => Some(v.get().to_owned()),
            Some(_) => return Err("map.id_field: the id must be a string or a number".into()),
            None => None,
        };
        let data = match field("map.data_field", &self.map.data_field)? {
            Some(v) => data_text(v.get()),
            None => data_text(doc.get()),
        };
        Ok(Submission { channels, users, draft: Draft { id, event, data, retry: None } })
    }

    /// The type set by the map, else the message's own.
    fn event(&self, msg: &Message<'_>) -> Option<String> {
        self.map.event.clone().or_else(|| msg.event.map(str::to_owned))
    }

    /// The channels from the templates; none for an event addressed to users when no template
    /// was configured (it then reaches the users' every stream).
    fn channels(&self, msg: &Message<'_>, to_users: bool) -> Result<Vec<String>, String> {
        if to_users && !self.templates_set {
            return Ok(Vec::new());
        }
        self.templates.iter().map(|t| render_split(t, msg.subject, &self.source, self.levels)).collect()
    }
}

/// Whether a message is a JSON object with `data`: Herald's event format (anything else in it
/// is checked when it is read as one).
fn looks_like_herald_event(text: &str) -> bool {
    let Some(first) = text.trim_start().as_bytes().first() else { return false };
    if *first != b'{' {
        return false;
    }
    serde_json::from_str::<HashMap<Cow<'_, str>, &RawValue>>(text).is_ok_and(|m| {
        m.contains_key("data")
            && m.keys().all(|k| matches!(&**k, "id" | "event" | "data" | "retry" | "channel" | "channels" | "path" | "users"))
    })
}

/// Fills a template: `{subject}`, `{source}`, `{1}`…`{9}` (the subject's dot-separated parts;
/// MQTT topics' `/`-separated ones), `{{` and `}}`.
pub fn render(template: &str, subject: &str, source: &str) -> Result<String, String> {
    render_split(template, subject, source, None)
}

/// [`render`] with the subject's levels split at `levels` when given.
pub fn render_split(template: &str, subject: &str, source: &str, levels: Option<char>) -> Result<String, String> {
    let sep = levels.unwrap_or(if subject.contains('/') && !subject.contains('.') { '/' } else { '.' });
    let mut out = String::with_capacity(template.len() + subject.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
            out.push(tail.as_bytes()[0] as char);
            rest = after;
            continue;
        }
        let end = tail.find('}').ok_or("unclosed `{` in a channel template")?;
        match &tail[1..end] {
            "subject" => out.push_str(subject),
            "source" => out.push_str(source),
            n => {
                let n: usize = n.parse().map_err(|_| format!("unknown placeholder `{{{n}}}`"))?;
                let part = subject.split(sep).nth(n - 1).ok_or_else(|| format!("`{subject}` has no part {n} for `{template}`"))?;
                out.push_str(part);
            }
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value at a JSON pointer (RFC 6901), as written in the document.
pub fn pointer_raw<'a>(doc: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    if pointer.is_empty() {
        return Some(doc);
    }
    let mut at = doc;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let text = at.get().trim_start();
        at = if text.starts_with('{') {
            let map: HashMap<Cow<'a, str>, &'a RawValue> = serde_json::from_str(at.get()).ok()?;
            map.get(token.as_str()).copied()?
        } else if text.starts_with('[') {
            let list: Vec<&'a RawValue> = serde_json::from_str(at.get()).ok()?;
            let i: usize = token.parse().ok().filter(|_| token == "0" || !token.starts_with('0'))?;
            list.get(i).copied()?
        } else {
            return None;
        };
    }
    Some(at)
}

fn one_string(v: &RawValue) -> Result<String, String> {
    if v.get().starts_with('"') { Ok(string_text(v.get())) } else { Err(format!("`{}` is not a string", v.get())) }
}

/// A string, or an array of strings.
fn strings(v: &RawValue) -> Result<Vec<String>, String> {
    if v.get().starts_with('[') {
        let list: Vec<&RawValue> = serde_json::from_str(v.get()).map_err(|e| e.to_string())?;
        list.into_iter().map(one_string).collect()
    } else {
        one_string(v).map(|s| vec![s])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapper(toml: &str) -> Mapper {
        let config: SourceConfig = toml::from_str(&format!("name = \"s\"\ntype = \"amqp\"\nurl = \"amqp://h\"\n{toml}")).unwrap();
        config.validate().unwrap();
        Mapper::new(&config)
    }

    fn map(m: &Mapper, subject: &str, payload: &str) -> Result<Submission, String> {
        m.map(&Message { subject, payload: payload.as_bytes(), event: None })
    }

    #[test]
    fn a_herald_event_needs_no_mapping() {
        let m = mapper("");
        let s = map(&m, "rk", r#"{"path": "news", "event": "e", "id": 42, "data": {"b": 1, "a": 2}}"#).unwrap();
        assert_eq!(s.channels, ["news"]);
        assert_eq!((s.draft.id.as_deref(), s.draft.event.as_deref(), s.draft.data.as_str()), (Some("42"), Some("e"), r#"{"b":1,"a":2}"#));
        // Naming no channel: the template (the routing key by default).
        assert_eq!(map(&m, "orders.42", r#"{"data": "x"}"#).unwrap().channels, ["orders.42"]);
        // To users, with no template configured: their every stream.
        let s = map(&m, "rk", r#"{"data": "x", "users": ["u1"]}"#).unwrap();
        assert_eq!((s.channels.len(), s.users.as_slice()), (0, ["u1".to_string()].as_slice()));
        // Anything else is data, as it is.
        assert_eq!(map(&m, "rk", "plain text").unwrap().draft.data, "plain text");
        assert_eq!(map(&m, "rk", r#"{"data": 1, "other": 2}"#).unwrap().draft.data, r#"{"data": 1, "other": 2}"#);
        assert!(m.map(&Message { subject: "rk", payload: b"\xff", event: None }).is_err());
    }

    #[test]
    fn fields_and_templates() {
        let m = mapper(
            "[map]\nchannels = [\"orders/{2}\", \"all\"]\nusers_field = \"/user/id\"\nevent_field = \"/type\"\nid_field = \"/n\"\ndata_field = \"/body\"",
        );
        let s = map(&m, "orders.42.created", r#"{"user": {"id": "alice"}, "type": "t", "n": 7, "body": {"z": 1.50}}"#).unwrap();
        assert_eq!(s.channels, ["orders/42", "all"]);
        assert_eq!(s.users, ["alice"]);
        assert_eq!((s.draft.event.as_deref(), s.draft.id.as_deref(), s.draft.data.as_str()), (Some("t"), Some("7"), r#"{"z":1.50}"#));
        assert!(map(&m, "orders", r#"{"user": {"id": "a"}, "type": "t", "n": 1, "body": 1}"#).unwrap_err().contains("no part 2"));
        assert!(map(&m, "orders.1", r#"{"type": "t"}"#).unwrap_err().contains("/user/id"));
        assert!(map(&m, "orders.1", "not json").unwrap_err().contains("not JSON"));
        assert!(map(&m, "orders.1", r#"{"user": {"id": 5}, "type": "t", "n": 1, "body": 1}"#).unwrap_err().contains("not a string"));
    }

    #[test]
    fn the_go_servers_messages_route_on_userid() {
        let m = mapper("[map]\nchannels = [\"some-topic\"]\nusers_field = \"/userid\"\nevent_field = \"/type\"");
        let msg = r#"{"userid": "bb68", "filename": "f", "finished": false, "type": "foundcontract"}"#;
        let s = map(&m, "", msg).unwrap();
        assert_eq!((s.channels.as_slice(), s.users.as_slice()), (["some-topic".to_string()].as_slice(), ["bb68".to_string()].as_slice()));
        assert_eq!(s.draft.data, r#"{"userid":"bb68","filename":"f","finished":false,"type":"foundcontract"}"#);
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc: &RawValue = serde_json::from_str(r#"{"a/b": {"~k": [10, {"x": "y"}]}}"#).unwrap();
        assert_eq!(pointer_raw(doc, "/a~1b/~0k/1/x").unwrap().get(), r#""y""#);
        assert_eq!(pointer_raw(doc, "/a~1b/~0k/0").unwrap().get(), "10");
        assert!(pointer_raw(doc, "/a~1b/~0k/01").is_none());
        assert!(pointer_raw(doc, "/missing").is_none());
        assert_eq!(render("{{{subject}}}-{source}", "a.b", "src").unwrap(), "{a.b}-src");
        assert_eq!(render("t/{2}", "home/kitchen/temp", "s").unwrap(), "t/kitchen");
        assert_eq!(render_split("t/{2}", "plant/boiler.2/temp", "s", Some('/')).unwrap(), "t/boiler.2", "an MQTT topic's levels");
    }
}
