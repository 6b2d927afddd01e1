//! Declarative request and response transformation: a route's input fields gathered
//! from the path, the query, headers and the body; its JSON reply reshaped.

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::header::HeaderMap;
use polycall_core::Status;
use serde_json::{Map, Value as Json};

/// Where an input field comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A path parameter.
    Path(String, Type),
    /// A query parameter.
    Query(String, Type),
    /// A request header (lower case).
    Header(String, Type),
    /// The whole body.
    Body,
    /// A top-level field of the body.
    BodyField(String),
}

/// How a text parameter becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    String,
    Int,
    Number,
    Bool,
    Json,
}

impl Type {
    /// The JSON schema `type` of the parameter (OpenAPI).
    pub(crate) fn schema(self) -> Json {
        match self {
            Type::String => serde_json::json!({"type": "string"}),
            Type::Int => serde_json::json!({"type": "integer"}),
            Type::Number => serde_json::json!({"type": "number"}),
            Type::Bool => serde_json::json!({"type": "boolean"}),
            Type::Json => serde_json::json!({}),
        }
    }

    fn convert(self, what: &str, text: &str) -> Result<Json, Status> {
        let bad =
            |kind: &str| Status::invalid_input(format!("{what} must be {kind}, not {text:?}"));
        match self {
            Type::String => Ok(Json::String(text.to_owned())),
            Type::Int => text
                .trim()
                .parse::<i64>()
                .map(Json::from)
                .map_err(|_| bad("an integer")),
            Type::Number => text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Json::Number)
                .ok_or_else(|| bad("a number")),
            Type::Bool => match text.trim() {
                "true" | "1" => Ok(Json::Bool(true)),
                "false" | "0" => Ok(Json::Bool(false)),
                _ => Err(bad("true or false")),
            },
            Type::Json => serde_json::from_str(text).map_err(|_| bad("JSON")),
        }
    }
}

impl Source {
    /// Parses `path.id:int`, `query.limit`, `header.x-tenant`, `body`, `body.items`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text == "body" {
            return Ok(Source::Body);
        }
        let (place, rest) = text.split_once('.').ok_or_else(|| {
            format!("source {text:?} is not path.NAME, query.NAME, header.NAME, body or body.FIELD")
        })?;
        let (name, ty) = match rest.rsplit_once(':') {
            Some((name, ty)) => (
                name,
                match ty {
                    "string" => Type::String,
                    "int" => Type::Int,
                    "number" => Type::Number,
                    "bool" => Type::Bool,
                    "json" => Type::Json,
                    other => {
                        return Err(format!(
                            "source {text:?}: type {other:?} is not string, int, number, bool or json"
                        ));
                    }
                },
            ),
            None => (rest, Type::String),
        };
        if name.is_empty() {
            return Err(format!("source {text:?} names no parameter"));
        }
        match place {
            "path" => Ok(Source::Path(name.to_owned(), ty)),
            "query" => Ok(Source::Query(name.to_owned(), ty)),
            "header" => Ok(Source::Header(name.to_ascii_lowercase(), ty)),
            "body" if ty == Type::String && !rest.contains(':') => {
                Ok(Source::BodyField(name.to_owned()))
            }
            "body" => Err(format!(
                "source {text:?}: body fields are JSON already, give no type"
            )),
            other => Err(format!(
                "source {text:?}: {other:?} is not path, query, header or body"
            )),
        }
    }
}

/// A route's input: fields by (dotted) name and their sources, and defaults.
#[derive(Debug, Clone, Default)]
pub(crate) struct Input {
    pub(crate) fields: Vec<(Vec<String>, Source)>,
    pub(crate) defaults: Vec<(Vec<String>, Json)>,
}

/// What a request offers a route's input.
pub(crate) struct Request<'a> {
    pub(crate) params: &'a [(String, String)],
    pub(crate) query: &'a [(String, String)],
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a Bytes,
}

impl Input {
    /// Whether the route has no mapping: the body passes as it is.
    pub(crate) fn is_passthrough(&self) -> bool {
        self.fields.is_empty() && self.defaults.is_empty()
    }

    /// Whether some field takes the body (or part of it).
    pub(crate) fn maps_body(&self) -> bool {
        self.fields
            .iter()
            .any(|(_, s)| matches!(s, Source::Body | Source::BodyField(_)))
    }

    /// The call's input for `req`. The body has been checked to be JSON (or empty).
    pub(crate) fn build(&self, req: &Request<'_>) -> Result<Option<Json>, Status> {
        if self.is_passthrough() {
            return Ok(None);
        }
        let body: Option<Json> = if req.body.is_empty() {
            None
        } else {
            Some(
                serde_json::from_slice(req.body)
                    .map_err(|e| Status::malformed(format!("the body is not JSON: {e}")))?,
            )
        };
        let mut out = match (&body, self.maps_body()) {
            (Some(Json::Object(m)), false) => m.clone(),
            (Some(_), false) => {
                return Err(Status::invalid_input(
                    "this route takes a JSON object body (its fields are completed from the path, query and headers)",
                ));
            }
            _ => Map::new(),
        };
        for (field, source) in &self.fields {
            let value = match source {
                Source::Path(name, ty) => lookup(req.params, name)
                    .map(|v| ty.convert(&format!("path parameter `{name}`"), v))
                    .transpose()?,
                Source::Query(name, ty) => lookup(req.query, name)
                    .map(|v| ty.convert(&format!("query parameter `{name}`"), v))
                    .transpose()?,
                Source::Header(name, ty) => match req.headers.get(name.as_str()) {
                    None => None,
                    Some(v) => {
                        let text = v.to_str().map_err(|_| {
                            Status::invalid_input(format!("header `{name}` is not text"))
                        })?;
                        Some(ty.convert(&format!("header `{name}`"), text)?)
                    }
                },
                Source::Body => body.clone(),
                Source::BodyField(name) => match &body {
                    Some(Json::Object(m)) => m.get(name).cloned(),
                    Some(_) => {
                        return Err(Status::invalid_input(format!(
                            "this route takes field `{name}` of a JSON object body"
                        )));
                    }
                    None => None,
                },
            };
            if let Some(value) = value {
                set(&mut out, field, value);
            }
        }
        for (field, value) in &self.defaults {
            if get(&out, field).is_none() {
                set(&mut out, field, value.clone());
            }
        }
        Ok(Some(Json::Object(out)))
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn get<'a>(map: &'a Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    let (last, parents) = path.split_last()?;
    let mut map = map;
    for p in parents {
        map = map.get(p)?.as_object()?;
    }
    map.get(last)
}

fn set(map: &mut Map<String, Json>, path: &[String], value: Json) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut map = map;
    for p in parents {
        let entry = map
            .entry(p.clone())
            .or_insert_with(|| Json::Object(Map::new()));
        if !entry.is_object() {
            *entry = Json::Object(Map::new());
        }
        map = entry.as_object_mut().expect("made an object above");
    }
    map.insert(last.clone(), value);
}

/// A dotted field name as its parts; empty parts are refused.
pub(crate) fn field_path(name: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = name.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("field name {name:?} has an empty part"));
    }
    Ok(parts)
}

/// How a JSON reply is reshaped.
#[derive(Debug, Clone, Default)]
pub(crate) struct Output {
    pub(crate) pick: Option<Vec<String>>,
    pub(crate) rename: BTreeMap<String, String>,
    pub(crate) omit: Vec<String>,
}

impl Output {
    /// Whether replies pass as they are.
    pub(crate) fn is_passthrough(&self) -> bool {
        self.pick.is_none() && self.rename.is_empty() && self.omit.is_empty()
    }

    /// Reshapes a JSON reply (one that is not JSON passes as it is).
    pub(crate) fn apply(&self, reply: Bytes) -> Bytes {
        if self.is_passthrough() {
            return reply;
        }
        let Ok(mut value) = serde_json::from_slice::<Json>(&reply) else {
            return reply;
        };
        if let Some(pick) = &self.pick {
            value = match &value {
                Json::Object(m) => get(m, pick).cloned().unwrap_or(Json::Null),
                _ => Json::Null,
            };
        }
        if let Json::Object(m) = &mut value {
            for (from, to) in &self.rename {
                if let Some(v) = m.remove(from) {
                    m.insert(to.clone(), v);
                }
            }
            for field in &self.omit {
                m.remove(field);
            }
        }
        Bytes::from(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(fields: &[(&str, &str)], defaults: &[(&str, Json)]) -> Input {
        Input {
            fields: fields
                .iter()
                .map(|(f, s)| (field_path(f).unwrap(), Source::parse(s).unwrap()))
                .collect(),
            defaults: defaults
                .iter()
                .map(|(f, v)| (field_path(f).unwrap(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn sources_parse_and_refuse() {
        assert_eq!(
            Source::parse("path.id:int").unwrap(),
            Source::Path("id".into(), Type::Int)
        );
        assert_eq!(
            Source::parse("header.X-Tenant").unwrap(),
            Source::Header("x-tenant".into(), Type::String)
        );
        assert_eq!(Source::parse("body").unwrap(), Source::Body);
        assert_eq!(
            Source::parse("body.items").unwrap(),
            Source::BodyField("items".into())
        );
        for bad in ["id", "cookie.x", "path.", "query.n:float", "body.x:int"] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn input_gathers_typed_fields_over_the_body_with_defaults() {
        let i = input(
            &[
                ("item_id", "path.id:int"),
                ("filter.verbose", "query.verbose:bool"),
                ("tenant", "header.x-tenant"),
            ],
            &[("limit", Json::from(10)), ("item_id", Json::from(0))],
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().unwrap());
        let body = Bytes::from_static(br#"{"note": "hi", "limit": 3}"#);
        let req = Request {
            params: &[("id".into(), "42".into())],
            query: &[("verbose".into(), "true".into())],
            headers: &headers,
            body: &body,
        };
        let out = i.build(&req).unwrap().unwrap();
        assert_eq!(
            out,
            serde_json::json!({"note": "hi", "limit": 3, "item_id": 42, "filter": {"verbose": true}, "tenant": "acme"})
        );
        let bad = Request {
            params: &[("id".into(), "x1".into())],
            ..req
        };
        let e = i.build(&bad).unwrap_err();
        assert!(
            e.message.contains("path parameter `id` must be an integer"),
            "{e}"
        );
    }

    #[test]
    fn output_picks_renames_and_omits() {
        let o = Output {
            pick: Some(field_path("item").unwrap()),
            rename: [("item_id".to_owned(), "id".to_owned())].into(),
            omit: vec!["cost".into()],
        };
        let out = o.apply(Bytes::from_static(
            br#"{"item": {"item_id": 7, "cost": 3, "name": "pen"}, "x": 1}"#,
        ));
        assert_eq!(
            serde_json::from_slice::<Json>(&out).unwrap(),
            serde_json::json!({"id": 7, "name": "pen"})
        );
        assert_eq!(o.apply(Bytes::from_static(b"\x00bin")), &b"\x00bin"[..]);
    }
}
