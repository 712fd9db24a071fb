//! `creditd models import`: a public price map into the price book
//! (`docs/import.md`), through the same code as `POST /v1/model-imports`.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;

use creditd_core::price_import::ImportOptions;
use creditd_core::pricing::MAX_MULTIPLIER;
use creditd_core::units::Factor;
use creditd_server::dto::ImportReportOut;
use creditd_server::import::{Filter, Format};
use creditd_store::SystemClock;

use crate::Failure;
use crate::cli::{ImportFormat, ModelsImportArgs};
use crate::commands::{database, open_store, resolve};

pub async fn import(args: &ModelsImportArgs) -> Result<(), Failure> {
    let (config, url) = resolve(&args.db)?;
    let database = database(&url)?;
    let format = match args.format {
        ImportFormat::Litellm => Format::Litellm,
        ImportFormat::Modelsdev => Format::Modelsdev,
    };
    let multiplier = match &args.multiplier {
        None => None,
        Some(text) => Some(
            Factor::parse(text)
                .ok()
                .filter(|m| !m.is_negative() && *m <= MAX_MULTIPLIER)
                .ok_or_else(|| Failure::usage(format!("--multiplier {text:?}: must be a decimal from 0 to 1000")))?,
        ),
    };
    let bytes =
        std::fs::read(&args.file).map_err(|e| Failure::runtime(format!("cannot read {}: {e}", args.file.display())))?;
    let filter = Filter { providers: args.provider.clone(), only: args.only.clone() };
    let options = ImportOptions { multiplier, force: args.force, overwrite_edits: args.overwrite_edits };
    let report = {
        let store = open_store(&database, config.engine(), Arc::new(SystemClock))?;
        creditd_server::import::run(store.as_ref(), format, &bytes, &filter, options, args.dry_run)
            .await
            .map_err(|e| Failure::runtime(format!("cannot import {}: {}", args.file.display(), e.message)))?
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| Failure::runtime(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", render(&report));
    }
    let _ = std::io::stdout().flush();
    if report.counts.needs_force > 0 {
        return Err(Failure::runtime(format!(
            "{} models would move more than 10x; nothing was written (check the prices, then pass --force)",
            report.counts.needs_force
        )));
    }
    Ok(())
}

/// The report as a diff: one line per model that is new (`+`), changed
/// (`~`), kept as the operator set it (`=`) or refused (`!`), its field
/// changes indented below; then the skipped entries and the counts.
pub fn render(report: &ImportReportOut) -> String {
    let mut out = String::new();
    for m in &report.models {
        let (mark, what) = match m.action {
            "new" => ("+", "new".to_string()),
            "changed" => ("~", "changed".to_string()),
            "kept_edit" => ("=", "kept: last set by the operator (--overwrite-edits to replace)".to_string()),
            _ => ("!", "moves more than 10x (--force to accept)".to_string()),
        };
        let versions = match (m.previous_version, m.price_version) {
            (Some(a), Some(b)) => format!(" v{a} -> v{b}"),
            (None, Some(b)) => format!(" v{b}"),
            (Some(a), None) => format!(" v{a}"),
            (None, None) => String::new(),
        };
        let _ = writeln!(out, "{mark} {}{versions}: {what}", m.id);
        for c in &m.changes {
            let old = c.old.as_deref().unwrap_or("-");
            let new = c.new.as_deref().unwrap_or("-");
            let _ = writeln!(out, "    {}: {old} -> {new}", c.field);
        }
    }
    for s in &report.skipped {
        let _ = writeln!(out, "skipped {}: {}", s.id, s.reason);
    }
    let c = &report.counts;
    let verb = if report.applied {
        "imported"
    } else if report.dry_run {
        "dry run, nothing written"
    } else {
        "refused, nothing written"
    };
    let _ = writeln!(
        out,
        "{} ({verb}): {} new, {} changed, {} unchanged, {} kept (operator edits), {} need --force, {} skipped, {} filtered out",
        report.format, c.new, c.changed, c.unchanged, c.kept_edits, c.needs_force, c.skipped, c.filtered_out
    );
    out
}
