//! The report of a price-map import (`POST /v1/model-imports`, `docs/import.md`).

use creditd_core::price_import::{ImportAction, RateMove};
use creditd_core::pricing::{ModelPrice, TokenRates};
use creditd_core::units::Usd;
use creditd_store::{ImportOutcome, ImportedModel};
use serde::Serialize;

use crate::import::{ParsedMap, Skipped};

#[derive(Debug, Serialize)]
pub struct ImportReportOut {
    pub format: &'static str,
    pub dry_run: bool,
    /// False for a dry run, and for an import refused because a rate moves more than 10×.
    pub applied: bool,
    pub counts: ImportCountsOut,
    /// Every model that is new, changed, kept or refused (unchanged ones are only counted).
    pub models: Vec<ImportedModelOut>,
    pub skipped: Vec<SkippedOut>,
}

#[derive(Debug, Default, Serialize)]
pub struct ImportCountsOut {
    pub new: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub kept_edits: usize,
    pub needs_force: usize,
    pub skipped: usize,
    pub filtered_out: usize,
}

#[derive(Debug, Serialize)]
pub struct ImportedModelOut {
    pub id: String,
    /// `new`, `changed`, `kept_edit` or `needs_force`.
    pub action: &'static str,
    pub previous_version: Option<i64>,
    /// The version written; null when nothing was written.
    pub price_version: Option<i64>,
    pub changes: Vec<FieldChangeOut>,
    pub large_moves: Vec<RateMoveOut>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FieldChangeOut {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RateMoveOut {
    pub rate: String,
    pub old: String,
    pub new: String,
}

#[derive(Debug, Serialize)]
pub struct SkippedOut {
    pub id: String,
    pub reason: String,
}

impl From<&Skipped> for SkippedOut {
    fn from(s: &Skipped) -> Self {
        SkippedOut { id: s.id.clone(), reason: s.reason.clone() }
    }
}

fn rates(prefix: &str, r: &TokenRates<Usd>, out: &mut Vec<(String, String)>) {
    for (class, v) in
        [("input", r.input), ("cache_read", r.cache_read), ("cache_write", r.cache_write), ("output", r.output)]
    {
        if let Some(v) = v {
            out.push((format!("{prefix}{class}"), v.to_string()));
        }
    }
}

/// The fields of a price an import can change, flattened for a diff.
fn fields(price: &ModelPrice) -> Vec<(String, String)> {
    let mut out = Vec::new();
    rates("cost_usd_per_mtok.", &price.cost_usd_per_mtok, &mut out);
    for t in &price.tiers {
        rates(&format!("tiers[>{}].cost_usd_per_mtok.", t.above_input_tokens), &t.cost_usd_per_mtok, &mut out);
    }
    out.push(("max_output_tokens".into(), price.max_output_tokens.to_string()));
    out.push(("multiplier".into(), price.multiplier.to_string()));
    out
}

/// What differs between two prices, field by field (`old` none: a new field).
pub fn price_diff(old: Option<&ModelPrice>, new: &ModelPrice) -> Vec<FieldChangeOut> {
    let before = old.map(fields).unwrap_or_default();
    let after = fields(new);
    let mut changes = Vec::new();
    for (field, value) in &after {
        let was = before.iter().find(|(f, _)| f == field).map(|(_, v)| v.clone());
        if was.as_ref() != Some(value) {
            changes.push(FieldChangeOut { field: field.clone(), old: was, new: Some(value.clone()) });
        }
    }
    for (field, value) in &before {
        if !after.iter().any(|(f, _)| f == field) {
            changes.push(FieldChangeOut { field: field.clone(), old: Some(value.clone()), new: None });
        }
    }
    changes
}

fn moves(moves: &[RateMove]) -> Vec<RateMoveOut> {
    moves.iter().map(|m| RateMoveOut { rate: m.rate.clone(), old: m.old.to_string(), new: m.new.to_string() }).collect()
}

impl ImportedModelOut {
    fn from_model(m: &ImportedModel) -> Option<Self> {
        let previous = m.previous.as_ref().map(|p| &p.price);
        let (action, price, large) = match &m.action {
            ImportAction::Unchanged => return None,
            ImportAction::New(p) => ("new", p, Vec::new()),
            ImportAction::Changed(p) => ("changed", p, Vec::new()),
            ImportAction::KeptEdit(p) => ("kept_edit", p, Vec::new()),
            ImportAction::NeedsForce { price, moves: m } => ("needs_force", price, moves(m)),
        };
        Some(ImportedModelOut {
            id: m.id.clone(),
            action,
            previous_version: m.previous.as_ref().map(|p| p.price_version),
            price_version: m.price_version,
            changes: price_diff(previous, price),
            large_moves: large,
        })
    }
}

impl ImportReportOut {
    pub fn new(format: &'static str, dry_run: bool, parsed: &ParsedMap, outcome: &ImportOutcome) -> Self {
        let mut counts =
            ImportCountsOut { skipped: parsed.skipped.len(), filtered_out: parsed.filtered_out, ..Default::default() };
        for m in &outcome.models {
            match m.action {
                ImportAction::New(_) => counts.new += 1,
                ImportAction::Changed(_) => counts.changed += 1,
                ImportAction::Unchanged => counts.unchanged += 1,
                ImportAction::KeptEdit(_) => counts.kept_edits += 1,
                ImportAction::NeedsForce { .. } => counts.needs_force += 1,
            }
        }
        ImportReportOut {
            format,
            dry_run,
            applied: outcome.applied,
            counts,
            models: outcome.models.iter().filter_map(ImportedModelOut::from_model).collect(),
            skipped: parsed.skipped.iter().map(SkippedOut::from).collect(),
        }
    }
}
