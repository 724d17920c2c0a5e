//! The model table: which Anthropic model names are served, and as which Kiro `modelId`.
//!
//! An unknown model is a 400 `invalid_request_error` naming the known ones: the request is
//! never silently sent to another model.
//!
//! ```
//! use tower_account_pool::kiro::anthropic::{ModelEntry, ModelTable};
//!
//! let table = ModelTable::default();
//! assert_eq!(table.resolve("claude-sonnet-4-5-20250929").unwrap().kiro_id, "claude-sonnet-4.5");
//! assert_eq!(table.resolve("CLAUDE-SONNET-4-5").unwrap().id, "claude-sonnet-4-5-20250929");
//! let error = table.resolve("gpt-4o").unwrap_err();
//! assert!(error.message().starts_with("model `gpt-4o` is not served here; known models: "));
//!
//! // Add the names Claude Code sends by default, served by a model Kiro has.
//! let table = table.with(
//!     ModelEntry::new("claude-opus-5-5", "claude-opus-4.6", "Claude Opus (via Kiro Opus 4.6)")
//!         .context_window(1_000_000),
//! );
//! assert_eq!(table.resolve("claude-opus-5-5").unwrap().kiro_id, "claude-opus-4.6");
//! ```

use std::fmt;

use super::error::AnthropicError;
use super::json;

/// One served model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The Anthropic id listed by `/v1/models` (e.g. `claude-sonnet-4-5-20250929`).
    pub id: String,
    /// Other names clients may send for it (e.g. `claude-sonnet-4-5`).
    pub aliases: Vec<String>,
    /// The Kiro `modelId` sent upstream.
    pub kiro_id: String,
    /// A human-readable name.
    pub display_name: String,
    /// RFC 3339 release date, as `/v1/models` lists it.
    pub created_at: String,
    /// The context window in tokens: turns Kiro's `contextUsagePercentage` into input tokens.
    pub context_window: u64,
    /// Largest output, as `/v1/models` lists it.
    pub max_output_tokens: u64,
}

impl ModelEntry {
    /// A model with a 200 000-token window, 64 000 output tokens, no aliases.
    pub fn new(
        id: impl Into<String>,
        kiro_id: impl Into<String>,
        display_name: impl Into<String>,
    ) -> Self {
        ModelEntry {
            id: id.into(),
            aliases: Vec::new(),
            kiro_id: kiro_id.into(),
            display_name: display_name.into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            context_window: 200_000,
            max_output_tokens: 64_000,
        }
    }

    /// Adds a name clients may send.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.aliases.push(alias.into());
        self
    }

    /// Sets the release date (RFC 3339).
    pub fn created_at(mut self, at: impl Into<String>) -> Self {
        self.created_at = at.into();
        self
    }

    /// Sets the context window.
    pub fn context_window(mut self, tokens: u64) -> Self {
        self.context_window = tokens;
        self
    }

    /// Sets the largest output.
    pub fn max_output_tokens(mut self, tokens: u64) -> Self {
        self.max_output_tokens = tokens;
        self
    }

    fn matches(&self, name: &str) -> bool {
        self.id.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    pub(crate) fn write_info(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"type":"model","id":"#);
        json::write_str(out, &self.id);
        out.extend_from_slice(br#","display_name":"#);
        json::write_str(out, &self.display_name);
        out.extend_from_slice(br#","created_at":"#);
        json::write_str(out, &self.created_at);
        out.extend_from_slice(br#","max_input_tokens":"#);
        json::write_u64(out, self.context_window);
        out.extend_from_slice(br#","max_tokens":"#);
        json::write_u64(out, self.max_output_tokens);
        out.push(b'}');
    }
}

/// The served models, in listing order.
#[derive(Clone, PartialEq, Eq)]
pub struct ModelTable {
    entries: Vec<ModelEntry>,
}

impl fmt::Debug for ModelTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.id, &e.kiro_id)))
            .finish()
    }
}

impl Default for ModelTable {
    /// The Claude models Kiro serves (`kiro-upstream.md` §8.4, `anthropic-kiro.md` §2.3):
    ///
    /// | id (aliases) | Kiro `modelId` | window |
    /// |---|---|---|
    /// | `claude-sonnet-4-5-20250929` (`claude-sonnet-4-5`) | `claude-sonnet-4.5` | 200 000 |
    /// | `claude-sonnet-4-6` | `claude-sonnet-4.6` | 1 000 000 |
    /// | `claude-opus-4-5-20251101` (`claude-opus-4-5`) | `claude-opus-4.5` | 200 000 |
    /// | `claude-opus-4-6` | `claude-opus-4.6` | 1 000 000 |
    /// | `claude-haiku-4-5-20251001` (`claude-haiku-4-5`) | `claude-haiku-4.5` | 200 000 |
    /// | `claude-sonnet-4-20250514` (`claude-sonnet-4-0`) | `CLAUDE_SONNET_4_20250514_V1_0` | 200 000 |
    fn default() -> Self {
        ModelTable::new()
            .with(
                ModelEntry::new(
                    "claude-sonnet-4-5-20250929",
                    "claude-sonnet-4.5",
                    "Claude Sonnet 4.5",
                )
                .alias("claude-sonnet-4-5")
                .created_at("2025-09-29T00:00:00Z"),
            )
            .with(
                ModelEntry::new(
                    "claude-sonnet-4-6",
                    "claude-sonnet-4.6",
                    "Claude Sonnet 4.6",
                )
                .created_at("2026-02-17T00:00:00Z")
                .context_window(1_000_000),
            )
            .with(
                ModelEntry::new(
                    "claude-opus-4-5-20251101",
                    "claude-opus-4.5",
                    "Claude Opus 4.5",
                )
                .alias("claude-opus-4-5")
                .created_at("2025-11-01T00:00:00Z"),
            )
            .with(
                ModelEntry::new("claude-opus-4-6", "claude-opus-4.6", "Claude Opus 4.6")
                    .created_at("2026-02-05T00:00:00Z")
                    .context_window(1_000_000)
                    .max_output_tokens(128_000),
            )
            .with(
                ModelEntry::new(
                    "claude-haiku-4-5-20251001",
                    "claude-haiku-4.5",
                    "Claude Haiku 4.5",
                )
                .alias("claude-haiku-4-5")
                .created_at("2025-10-01T00:00:00Z"),
            )
            .with(
                ModelEntry::new(
                    "claude-sonnet-4-20250514",
                    "CLAUDE_SONNET_4_20250514_V1_0",
                    "Claude Sonnet 4",
                )
                .alias("claude-sonnet-4-0")
                .created_at("2025-05-14T00:00:00Z"),
            )
    }
}

impl ModelTable {
    /// An empty table (every model unknown).
    pub fn new() -> Self {
        ModelTable {
            entries: Vec::new(),
        }
    }

    /// Adds a model, or replaces the entry with the same id.
    pub fn with(mut self, entry: ModelEntry) -> Self {
        match self.entries.iter_mut().find(|e| e.id == entry.id) {
            Some(existing) => *existing = entry,
            None => self.entries.push(entry),
        }
        self
    }

    /// The models, in listing order.
    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// The entry for a client's model name (its id or an alias, ASCII case-insensitive), or a
    /// 400 `invalid_request_error` naming the known models.
    pub fn resolve(&self, name: &str) -> Result<&ModelEntry, AnthropicError> {
        self.entries
            .iter()
            .find(|e| e.matches(name))
            .ok_or_else(|| {
                let shown: String = name.chars().take(100).collect();
                AnthropicError::invalid_request(format!(
                    "model `{shown}` is not served here; known models: {}",
                    self.known_names()
                ))
            })
    }

    fn known_names(&self) -> String {
        if self.entries.is_empty() {
            return "none (the model table is empty)".into();
        }
        let mut names = Vec::new();
        for e in &self.entries {
            names.push(e.id.as_str());
            names.extend(e.aliases.iter().map(String::as_str));
        }
        names.join(", ")
    }

    /// The `GET /v1/models` answer: Anthropic's page shape (`data`, `has_more`, `first_id`,
    /// `last_id`), honouring the `limit` (default 20, 1–1000), `after_id` and `before_id`
    /// query parameters.
    pub fn list_json(&self, query: Option<&str>) -> Vec<u8> {
        let mut limit = 20usize;
        let mut after: Option<String> = None;
        let mut before: Option<String> = None;
        for pair in query.unwrap_or_default().split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "limit" => {
                    if let Ok(n) = v.parse::<usize>() {
                        limit = n.clamp(1, 1000);
                    }
                }
                "after_id" => after = Some(v.to_owned()),
                "before_id" => before = Some(v.to_owned()),
                _ => {}
            }
        }
        let all = &self.entries[..];
        let start = after
            .and_then(|a| all.iter().position(|e| e.id == a).map(|i| i + 1))
            .unwrap_or(0);
        let end = before
            .and_then(|b| all.iter().position(|e| e.id == b))
            .unwrap_or(all.len())
            .max(start);
        let window = &all[start..end];
        let page = &window[..window.len().min(limit)];
        let mut out = Vec::with_capacity(200 * page.len() + 64);
        out.extend_from_slice(br#"{"data":["#);
        for (i, e) in page.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            e.write_info(&mut out);
        }
        out.extend_from_slice(br#"],"has_more":"#);
        out.extend_from_slice(if page.len() < window.len() {
            b"true"
        } else {
            b"false"
        });
        out.extend_from_slice(br#","first_id":"#);
        match page.first() {
            Some(e) => json::write_str(&mut out, &e.id),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","last_id":"#);
        match page.last() {
            Some(e) => json::write_str(&mut out, &e.id),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        out
    }

    /// The `GET /v1/models/{id}` answer, or `None` for an unknown id.
    pub fn info_json(&self, id: &str) -> Option<Vec<u8>> {
        let entry = self.entries.iter().find(|e| e.matches(id))?;
        let mut out = Vec::with_capacity(200);
        entry.write_info(&mut out);
        Some(out)
    }
}
