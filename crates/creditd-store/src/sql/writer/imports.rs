//! The writer's side of a price-map import (`docs/import.md`): every model
//! of the import is decided against the current price book and written in
//! the one savepoint of the command, so an import is written whole or not
//! at all. Each version an import writes is recorded in `model_imports`:
//! a model whose current version is not there was last set by the operator
//! (API or configuration), and an import keeps it unless asked.

use std::collections::HashSet;

use creditd_core::engine::Refusal;
use creditd_core::price_import::{ImportAction, decide};

use super::{Pending, Writer};
use crate::sql::{DbExt, WriterDb, codec, params};
use crate::{ImportOutcome, ImportedModel, ModelImport, ModelVersion, Reply, StoreError};

impl<C: WriterDb> Writer<C> {
    pub(super) fn import_models(&mut self, import: ModelImport) -> Result<(Reply, Pending), StoreError> {
        let ModelImport { format, models, options, dry_run } = import;
        let mut seen = HashSet::new();
        if let Some((id, _)) = models.iter().find(|(id, _)| id.is_empty() || !seen.insert(id.as_str())) {
            return Err(Refusal::InvalidRequest(format!("model {id:?} is empty or given twice")).into());
        }
        let imported: HashSet<(String, i64)> = self
            .conn
            .query_vec("SELECT id, price_version FROM model_imports", params![], |row| {
                Ok((row.get::<String>(0)?, row.get::<i64>(1)?))
            })?
            .into_iter()
            .collect();
        let mut decided = Vec::with_capacity(models.len());
        for (id, price) in models {
            let previous = self.book.current.get(&id).cloned();
            let current = previous.as_ref().map(|m| (&m.price, imported.contains(&(id.clone(), m.price_version))));
            let action = decide(current, &price, &options);
            if let ImportAction::New(p) | ImportAction::Changed(p) = &action {
                p.validate().map_err(|e| Refusal::InvalidRequest(format!("model {id:?}: {e}")))?;
            }
            decided.push(ImportedModel { id, action, previous, price_version: None });
        }
        let refused = decided.iter().any(|m| matches!(m.action, ImportAction::NeedsForce { .. }));
        if dry_run || refused {
            return Ok((Reply::Imported(ImportOutcome { models: decided, applied: false }), Pending::Nothing));
        }
        let now = self.now();
        let mut written = Vec::new();
        for model in &mut decided {
            let (ImportAction::New(price) | ImportAction::Changed(price)) = &model.action else { continue };
            let price_version = model.previous.as_ref().map_or(1, |m| m.price_version + 1);
            self.conn.write(
                "INSERT INTO models (id, price_version, price, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![model.id, price_version, codec::encode_price(price), codec::micros(now)],
            )?;
            self.conn.write(
                "INSERT INTO model_imports (id, price_version, format, imported_at) VALUES (?1, ?2, ?3, ?4)",
                params![model.id, price_version, format, codec::micros(now)],
            )?;
            model.price_version = Some(price_version);
            written.push(ModelVersion { id: model.id.clone(), price_version, price: price.clone(), created_at: now });
        }
        Ok((Reply::Imported(ImportOutcome { models: decided, applied: true }), Pending::Models(written)))
    }
}
