//! The writer's side of applying the configuration at a start
//! (`docs/configuration.md`, the rule in `creditd_core::config_apply`):
//! every configured model and plan is decided against what the
//! configuration said when last applied (`config_applied`) and against the
//! store, and written in the one savepoint of the command. A conflict left
//! unresolved writes nothing at all, so the operator's decision is made on
//! the whole configuration as it was found.

use std::collections::HashMap;

use creditd_core::config_apply::{ConfigDecision, ConfigWinner, decide};
use creditd_core::engine::Refusal;
use creditd_core::plan::Plan;
use creditd_core::pricing::ModelPrice;

use super::{Pending, Writer};
use crate::sql::{DbExt, WriterDb, codec, params, rows};
use crate::{ConfigApply, ConfigEntry, ConfigKind, ConfigOutcome, ModelVersion, Reply, StoreError};

/// One entry decided, with what to write.
enum Write {
    Nothing,
    Model(String, ModelPrice),
    Plan(Plan),
}

impl<C: WriterDb> Writer<C> {
    pub(super) fn apply_config(&mut self, apply: ConfigApply) -> Result<(Reply, Pending), StoreError> {
        let ConfigApply { models, plans, on_conflict } = apply;
        let recorded: HashMap<(String, String), String> = self
            .conn
            .query_vec("SELECT kind, id, applied FROM config_applied", params![], |row| {
                Ok(((row.get::<String>(0)?, row.get::<String>(1)?), row.get::<String>(2)?))
            })?
            .into_iter()
            .collect();
        let last = |kind: ConfigKind, id: &str| recorded.get(&(kind.as_str().to_string(), id.to_string()));

        // Decide everything first: an unresolved conflict writes nothing.
        let mut decided: Vec<(ConfigEntry, String, Write)> = Vec::with_capacity(models.len() + plans.len());
        for (id, price) in models {
            price.validate().map_err(|e| Refusal::InvalidRequest(format!("model {id:?}: {e}")))?;
            let current = self.book.current.get(&id);
            let stored = current.map(|m| codec::encode_price(&m.price));
            let config = codec::encode_price(&price);
            let applied = last(ConfigKind::Model, &id);
            let decision = decide(stored.as_ref(), applied, &config);
            let entry = ConfigEntry {
                kind: ConfigKind::Model,
                id: id.clone(),
                decision,
                recorded: applied.is_some(),
                resolved: None,
                price_version: current.map(|m| m.price_version),
            };
            decided.push((entry, config, Write::Model(id, price)));
        }
        for plan in plans {
            plan.validate().map_err(|e| Refusal::InvalidRequest(format!("plan {:?}: {e}", plan.id)))?;
            let stored = self
                .conn
                .query_opt(
                    &format!("SELECT {} FROM plans WHERE id = ?1", rows::PLAN_COLUMNS),
                    params![plan.id],
                    rows::plan,
                )?
                .map(|p| codec::encode_plan(&p));
            let config = codec::encode_plan(&plan);
            let applied = last(ConfigKind::Plan, &plan.id);
            let decision = decide(stored.as_ref(), applied, &config);
            let entry = ConfigEntry {
                kind: ConfigKind::Plan,
                id: plan.id.clone(),
                decision,
                recorded: applied.is_some(),
                resolved: None,
                price_version: None,
            };
            decided.push((entry, config, Write::Plan(plan)));
        }
        let conflicted = decided.iter().any(|(e, _, _)| e.decision == ConfigDecision::Conflict);
        if conflicted && on_conflict.is_none() {
            let entries = decided.into_iter().map(|(e, _, _)| e).collect();
            return Ok((Reply::ConfigApplied(ConfigOutcome { entries, applied: false }), Pending::Nothing));
        }

        let now = self.now();
        let mut written_models = Vec::new();
        let mut written_plans = Vec::new();
        let mut entries = Vec::with_capacity(decided.len());
        for (mut entry, config, write) in decided {
            let write = match entry.decision {
                ConfigDecision::Create | ConfigDecision::Update => write,
                ConfigDecision::Conflict => {
                    entry.resolved = on_conflict;
                    if on_conflict == Some(ConfigWinner::Config) { write } else { Write::Nothing }
                }
                ConfigDecision::Unchanged | ConfigDecision::KeepEdit => Write::Nothing,
            };
            match write {
                Write::Nothing => {}
                Write::Model(id, price) => {
                    let price_version = entry.price_version.map_or(1, |v| v + 1);
                    self.conn.write(
                        "INSERT INTO models (id, price_version, price, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![id, price_version, config, codec::micros(now)],
                    )?;
                    entry.price_version = Some(price_version);
                    written_models.push(ModelVersion { id, price_version, price, created_at: now });
                }
                Write::Plan(plan) => {
                    rows::upsert_plan(&self.conn, &plan, now)?;
                    written_plans.push(plan);
                }
            }
            // From now on the configuration's entry counts as applied (also
            // when the API's version was kept: the file has said nothing new).
            if last(entry.kind, &entry.id) != Some(&config) {
                self.conn.write(
                    "INSERT INTO config_applied (kind, id, applied, applied_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, id) DO UPDATE SET applied = excluded.applied, applied_at = excluded.applied_at",
                    params![entry.kind.as_str(), entry.id, config, codec::micros(now)],
                )?;
            }
            entries.push(entry);
        }
        let pending = Pending::Config { models: written_models, plans: written_plans };
        Ok((Reply::ConfigApplied(ConfigOutcome { entries, applied: true }), pending))
    }
}
