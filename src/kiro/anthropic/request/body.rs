//! Writing the CodeWhisperer body: turns as `userInputMessage` / `assistantResponseMessage`,
//! tool input schemas as Kiro accepts them, while counting the prompt's size and tokens.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::turns::Turn;
use crate::kiro::anthropic::json::{self, write_str};

pub(super) struct Writer {
    pub(super) out: Vec<u8>,
    /// Token units (see `json::token_units`) of the prompt text written.
    pub(super) units: u64,
    /// Bytes of prompt text written.
    pub(super) text_bytes: usize,
    pub(super) images: u64,
}

impl Writer {
    pub(super) fn text(&mut self, s: &str) {
        self.units += json::token_units(s);
        self.text_bytes += s.len();
        write_str(&mut self.out, s);
    }

    fn raw_json(&mut self, raw: &str) {
        self.units += json::token_units(raw);
        self.text_bytes += raw.len();
        self.out.extend_from_slice(raw.as_bytes());
    }

    pub(super) fn user(
        &mut self,
        turn: &Turn<'_>,
        content: &str,
        model: &str,
        tools: Option<&[u8]>,
    ) {
        self.out
            .extend_from_slice(br#"{"userInputMessage":{"content":"#);
        self.text(content);
        self.out.extend_from_slice(br#","modelId":"#);
        write_str(&mut self.out, model);
        self.out.extend_from_slice(br#","origin":"AI_EDITOR""#);
        if !turn.images.is_empty() {
            self.out.extend_from_slice(br#","images":["#);
            for (i, image) in turn.images.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.images += 1;
                self.out.extend_from_slice(br#"{"format":""#);
                self.out.extend_from_slice(image.format.as_bytes());
                self.out.extend_from_slice(br#"","source":{"bytes":"#);
                write_str(&mut self.out, &image.data);
                self.out.extend_from_slice(b"}}");
            }
            self.out.push(b']');
        }
        let tools = tools.filter(|t| !t.is_empty());
        if !turn.results.is_empty() || tools.is_some() {
            self.out
                .extend_from_slice(br#","userInputMessageContext":{"#);
            if !turn.results.is_empty() {
                self.out.extend_from_slice(br#""toolResults":["#);
                for (i, r) in turn.results.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.out.extend_from_slice(br#"{"toolUseId":"#);
                    write_str(&mut self.out, &r.id);
                    self.out.extend_from_slice(br#","content":[{"text":"#);
                    let text = if r.text.is_empty() {
                        "(no output)"
                    } else {
                        &r.text
                    };
                    self.text(text);
                    self.out.extend_from_slice(br#"}],"status":"#);
                    if r.is_error {
                        self.out.extend_from_slice(br#""error","isError":true}"#);
                    } else {
                        self.out.extend_from_slice(br#""success"}"#);
                    }
                }
                self.out.push(b']');
                if tools.is_some() {
                    self.out.push(b',');
                }
            }
            if let Some(tools) = tools {
                self.out.extend_from_slice(br#""tools":["#);
                self.out.extend_from_slice(tools);
                self.out.push(b']');
            }
            self.out.push(b'}');
        }
        self.out.extend_from_slice(b"}}");
    }

    pub(super) fn assistant(&mut self, turn: &Turn<'_>) {
        self.out
            .extend_from_slice(br#"{"assistantResponseMessage":{"content":"#);
        let content = match (turn.text.is_empty(), turn.uses.is_empty()) {
            (false, _) => turn.text.as_str(),
            (true, false) => " ",
            (true, true) => "...",
        };
        self.text(content);
        if !turn.uses.is_empty() {
            self.out.extend_from_slice(br#","toolUses":["#);
            for (i, u) in turn.uses.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(br#"{"toolUseId":"#);
                write_str(&mut self.out, &u.id);
                self.out.extend_from_slice(br#","name":"#);
                self.text(&u.name);
                self.out.extend_from_slice(br#","input":"#);
                match u.input.map(RawValue::get) {
                    Some(raw) if raw.trim_start().starts_with('{') => self.raw_json(raw),
                    _ => self.out.extend_from_slice(b"{}"),
                }
                self.out.push(b'}');
            }
            self.out.push(b']');
        }
        self.out.extend_from_slice(b"}}");
    }
}

/// The top level of a tool input schema, read without copying: enough to know whether Kiro
/// takes it as it is.
#[derive(Deserialize)]
struct SchemaTop<'a> {
    #[serde(rename = "type", default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    /// Read only to check that it is an array of strings.
    #[serde(rename = "required", borrow, default)]
    _required: Option<Vec<&'a str>>,
}

/// Whether `schema` (trimmed JSON) can go to Kiro unchanged: an object with no `null`
/// anywhere, whose top-level `type` is a non-empty string, `properties` (when present) an
/// object and `required` (when present) an array of strings. A duplicate or escaped key, or
/// anything else unusual, takes the normalising path.
fn schema_is_well_formed(schema: &str) -> bool {
    if !schema.starts_with('{') || schema.contains("null") {
        return false;
    }
    match serde_json::from_str::<SchemaTop<'_>>(schema) {
        Ok(top) => {
            top.kind.is_some_and(|k| !k.is_empty())
                && top
                    .properties
                    .is_none_or(|p| p.get().trim_start().starts_with('{'))
        }
        Err(_) => false,
    }
}

/// A tool input schema as Kiro accepts it: an object with a `type`, `properties` an object,
/// `required` a list of strings, no `null` values. Schemas that need no change (see
/// [`schema_is_well_formed`]) are copied as they are.
pub(super) fn write_schema(w: &mut Writer, raw: Option<&RawValue>) {
    const EMPTY: &str = r#"{"type":"object","properties":{}}"#;
    let Some(raw) = raw.map(RawValue::get) else {
        w.raw_json(EMPTY);
        return;
    };
    let trimmed = raw.trim();
    if schema_is_well_formed(trimmed) {
        w.raw_json(trimmed);
        return;
    }
    let value: serde_json::Value = serde_json::from_str(trimmed).unwrap_or_default();
    let serde_json::Value::Object(mut map) = strip_nulls(value) else {
        w.raw_json(EMPTY);
        return;
    };
    if map
        .get("type")
        .and_then(|t| t.as_str())
        .is_none_or(str::is_empty)
    {
        map.insert("type".into(), "object".into());
    }
    let properties_ok = match map.get("properties") {
        Some(p) => p.is_object(),
        None => map.get("type").and_then(|t| t.as_str()) != Some("object"),
    };
    if !properties_ok {
        map.insert(
            "properties".into(),
            serde_json::Value::Object(Default::default()),
        );
    }
    if let Some(required) = map.get_mut("required") {
        match required {
            serde_json::Value::Array(items) => items.retain(|i| i.is_string()),
            _ => *required = serde_json::Value::Array(Vec::new()),
        }
    }
    let text = serde_json::Value::Object(map).to_string();
    w.raw_json(&text);
}

fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .filter(|v| !v.is_null())
                .map(strip_nulls)
                .collect(),
        ),
        other => other,
    }
}
