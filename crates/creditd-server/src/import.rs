//! Reading public price maps (LiteLLM's `model_prices_and_context_window.json`,
//! models.dev's `api.json`) into the models an import writes
//! (`docs/import.md`). Shared by `POST /v1/model-imports` and
//! `creditd models import`.
//!
//! Numbers are read from their JSON text ([`RawValue`]) and converted by
//! [`price_per_mtok`], never through a float. Unknown fields are ignored; an
//! entry that cannot be read whole is reported in `skipped` with the reason
//! and contributes nothing.

use std::collections::{BTreeMap, HashMap};

use creditd_core::price_import::{ImportedPrice, price_per_mtok};
use creditd_core::pricing::TokenRates;
use creditd_core::units::{MAX_TOKENS, Usd};
use serde_json::value::RawValue;

use creditd_core::price_import::ImportOptions;
use creditd_store::{Command, ModelImport, Reply, Store};

use crate::dto::{ImportReportOut, MAX_TIERS};
use crate::error::ApiError;
use crate::idempotency::unexpected;

/// The price maps an import reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Litellm,
    Modelsdev,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "litellm" => Some(Format::Litellm),
            "modelsdev" => Some(Format::Modelsdev),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Litellm => "litellm",
            Format::Modelsdev => "modelsdev",
        }
    }
}

/// Which entries of the file to import: empty lists take everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// LiteLLM's `litellm_provider`, models.dev's provider key.
    pub providers: Vec<String>,
    /// Model ids (the keys the price book will use).
    pub only: Vec<String>,
}

impl Filter {
    fn keeps(&self, provider: Option<&str>, id: &str) -> bool {
        (self.providers.is_empty() || provider.is_some_and(|p| self.providers.iter().any(|x| x == p)))
            && (self.only.is_empty() || self.only.iter().any(|x| x == id))
    }
}

/// An entry of the file that was not imported, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

/// What a price map gives: the models to import, in id order, and the
/// entries left out.
#[derive(Clone, Debug, Default)]
pub struct ParsedMap {
    pub models: Vec<(String, ImportedPrice)>,
    pub skipped: Vec<Skipped>,
    /// Entries the filter did not select.
    pub filtered_out: usize,
}

/// Reads a price map. `Err` only when the file as a whole is not one
/// (not JSON, not an object); bad entries are skipped.
pub fn parse(format: Format, bytes: &[u8], filter: &Filter) -> Result<ParsedMap, String> {
    let top: BTreeMap<String, &RawValue> =
        serde_json::from_slice(bytes).map_err(|e| format!("the file is not a JSON object: {e}"))?;
    let mut out = ParsedMap::default();
    match format {
        Format::Litellm => {
            for (id, raw) in top {
                litellm_entry(&id, raw, filter, &mut out);
            }
        }
        Format::Modelsdev => modelsdev(top, filter, &mut out)?,
    }
    Ok(out)
}

type Fields<'a> = BTreeMap<String, &'a RawValue>;

fn object(raw: &RawValue) -> Option<Fields<'_>> {
    serde_json::from_str(raw.get()).ok()
}

fn string(fields: &Fields<'_>, name: &str) -> Option<String> {
    fields.get(name).and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A price field: absent or `null` is `None`.
fn price(fields: &Fields<'_>, name: &str, shift: i32) -> Result<Option<Usd>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(raw) if is_null(raw) => Ok(None),
        Some(raw) => price_per_mtok(raw.get(), shift).map(Some).map_err(|e| format!("{name} {} {e}", raw.get())),
    }
}

/// A token count: absent or `null` is `None`.
fn count(fields: &Fields<'_>, name: &str) -> Result<Option<u64>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(raw) if is_null(raw) => Ok(None),
        Some(raw) => match raw.get().parse::<u64>() {
            Ok(n) if n <= MAX_TOKENS => Ok(Some(n)),
            _ => Err(format!("{name} {} is not a token count (0 to {MAX_TOKENS})", raw.get())),
        },
    }
}

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b))
}

fn any_rate(r: &TokenRates<Usd>) -> bool {
    r.input.is_some() || r.output.is_some() || r.cache_read.is_some() || r.cache_write.is_some()
}

/// LiteLLM's token classes: the field of each rate, with `_above_<N>k_tokens`
/// suffixes for input-size tiers.
const LITELLM_CLASSES: [&str; 4] =
    ["input_cost_per_token", "cache_read_input_token_cost", "cache_creation_input_token_cost", "output_cost_per_token"];

fn set_class(rates: &mut TokenRates<Usd>, class: usize, value: Option<Usd>) {
    match class {
        0 => rates.input = value,
        1 => rates.cache_read = value,
        2 => rates.cache_write = value,
        _ => rates.output = value,
    }
}

/// `<class>_above_<N>k_tokens` → (class, N × 1000).
fn litellm_tier_field(name: &str) -> Option<(usize, u64)> {
    LITELLM_CLASSES.iter().enumerate().find_map(|(i, class)| {
        let n = name.strip_prefix(class)?.strip_prefix("_above_")?.strip_suffix("k_tokens")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 6 {
            return None;
        }
        Some((i, n.parse::<u64>().ok()? * 1000))
    })
}

fn litellm_entry(id: &str, raw: &RawValue, filter: &Filter, out: &mut ParsedMap) {
    let skip = |out: &mut ParsedMap, reason: String| out.skipped.push(Skipped { id: id.to_string(), reason });
    if id == "sample_spec" {
        return skip(out, "not a model: LiteLLM's description of the fields".into());
    }
    let Some(fields) = object(raw) else {
        return skip(out, "malformed: the entry is not an object".into());
    };
    if !filter.keeps(string(&fields, "litellm_provider").as_deref(), id) {
        out.filtered_out += 1;
        return;
    }
    match litellm_price(&fields) {
        Ok(Some(price)) if id_ok(id) => out.models.push((id.to_string(), price)),
        Ok(Some(_)) => skip(out, "malformed: the id is not 1 to 128 characters of A-Z a-z 0-9 . _ : / @ -".into()),
        Ok(None) => {
            let mode = string(&fields, "mode").unwrap_or_else(|| "none given".into());
            skip(out, format!("no per-token price (mode {mode})"))
        }
        Err(why) => skip(out, format!("malformed: {why}")),
    }
}

/// `Ok(None)`: the entry has no per-token input or output price.
fn litellm_price(fields: &Fields<'_>) -> Result<Option<ImportedPrice>, String> {
    let mut base = TokenRates::default();
    for (i, class) in LITELLM_CLASSES.iter().enumerate() {
        set_class(&mut base, i, price(fields, class, 6)?);
    }
    if base.input.is_none() && base.output.is_none() {
        return Ok(None);
    }
    let mut tiers: BTreeMap<u64, TokenRates<Usd>> = BTreeMap::new();
    for name in fields.keys() {
        let Some((class, above)) = litellm_tier_field(name) else { continue };
        let value = price(fields, name, 6)?;
        if value.is_some() {
            set_class(tiers.entry(above).or_default(), class, value);
        }
    }
    if tiers.len() > MAX_TIERS {
        return Err(format!("more than {MAX_TIERS} tiers"));
    }
    Ok(Some(ImportedPrice {
        cost_usd_per_mtok: base,
        tiers: tiers.into_iter().collect(),
        max_output_tokens: count(fields, "max_output_tokens")?,
    }))
}

const MODELSDEV_CLASSES: [&str; 4] = ["input", "cache_read", "cache_write", "output"];

fn modelsdev_rates(fields: &Fields<'_>) -> Result<TokenRates<Usd>, String> {
    let mut rates = TokenRates::default();
    for (i, class) in MODELSDEV_CLASSES.iter().enumerate() {
        set_class(&mut rates, i, price(fields, class, 0)?);
    }
    Ok(rates)
}

fn modelsdev(top: BTreeMap<String, &RawValue>, filter: &Filter, out: &mut ParsedMap) -> Result<(), String> {
    // id → (provider, price) of the first provider that gave it.
    let mut found: BTreeMap<String, (String, ImportedPrice)> = BTreeMap::new();
    let mut conflicts: HashMap<String, Vec<String>> = HashMap::new();
    for (provider, raw) in top {
        let Some(fields) = object(raw) else {
            out.skipped.push(Skipped { id: provider, reason: "malformed: the provider is not an object".into() });
            continue;
        };
        let Some(models) = fields.get("models").and_then(|raw| object(raw)) else {
            out.skipped.push(Skipped { id: provider, reason: "malformed: the provider has no models object".into() });
            continue;
        };
        for (id, raw) in models {
            if !filter.keeps(Some(&provider), &id) {
                out.filtered_out += 1;
                continue;
            }
            let shown = format!("{provider}/{id}");
            let price = match object(raw) {
                None => Err("the model is not an object".to_string()),
                Some(model) => modelsdev_price(&model),
            };
            match price {
                Ok(Some(price)) if id_ok(&id) => match found.get(&id) {
                    None => {
                        found.insert(id, (provider.clone(), price));
                    }
                    // The same model at the same price through several providers: one model.
                    Some((_, first)) if *first == price => {}
                    Some((first, _)) => {
                        conflicts.entry(id).or_insert_with(|| vec![first.clone()]).push(provider.clone());
                    }
                },
                Ok(Some(_)) => out.skipped.push(Skipped {
                    id: shown,
                    reason: "malformed: the id is not 1 to 128 characters of A-Z a-z 0-9 . _ : / @ -".into(),
                }),
                Ok(None) => out.skipped.push(Skipped { id: shown, reason: "no cost given".into() }),
                Err(why) => out.skipped.push(Skipped { id: shown, reason: format!("malformed: {why}") }),
            }
        }
    }
    for (id, (_, price)) in found {
        if let Some(providers) = conflicts.get(&id) {
            out.skipped.push(Skipped {
                id,
                reason: format!(
                    "ambiguous: providers {} price it differently; choose one with --provider",
                    providers.join(", ")
                ),
            });
        } else {
            out.models.push((id, price));
        }
    }
    Ok(())
}

/// `Ok(None)`: no `cost`, or a cost without input and output.
fn modelsdev_price(model: &Fields<'_>) -> Result<Option<ImportedPrice>, String> {
    let Some(raw) = model.get("cost").filter(|raw| !is_null(raw)) else { return Ok(None) };
    let cost = object(raw).ok_or("cost is not an object")?;
    let base = modelsdev_rates(&cost)?;
    if base.input.is_none() && base.output.is_none() {
        return Ok(None);
    }
    let mut tiers: BTreeMap<u64, TokenRates<Usd>> = BTreeMap::new();
    match cost.get("tiers").filter(|raw| !is_null(raw)) {
        Some(raw) => {
            let list: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| "cost.tiers is not a list")?;
            for (i, raw) in list.into_iter().enumerate() {
                let tier = object(raw).ok_or_else(|| format!("cost.tiers[{i}] is not an object"))?;
                let what = tier
                    .get("tier")
                    .and_then(|raw| object(raw))
                    .ok_or_else(|| format!("cost.tiers[{i}].tier is missing"))?;
                let kind = string(&what, "type").unwrap_or_default();
                if kind != "context" {
                    return Err(format!("cost.tiers[{i}] is a {kind:?} tier; only context tiers are priced"));
                }
                let size = count(&what, "size")?.ok_or_else(|| format!("cost.tiers[{i}].tier.size is missing"))?;
                let rates = modelsdev_rates(&tier).map_err(|e| format!("cost.tiers[{i}].{e}"))?;
                if !any_rate(&rates) {
                    return Err(format!("cost.tiers[{i}] gives no rate"));
                }
                if tiers.insert(size, rates).is_some() {
                    return Err(format!("two tiers of size {size}"));
                }
            }
        }
        None => {
            if let Some(raw) = cost.get("context_over_200k").filter(|raw| !is_null(raw)) {
                let over = object(raw).ok_or("cost.context_over_200k is not an object")?;
                let rates = modelsdev_rates(&over).map_err(|e| format!("cost.context_over_200k.{e}"))?;
                if any_rate(&rates) {
                    tiers.insert(200_000, rates);
                }
            }
        }
    }
    if tiers.len() > MAX_TIERS {
        return Err(format!("more than {MAX_TIERS} tiers"));
    }
    let limit = model.get("limit").and_then(|raw| object(raw));
    let max_output_tokens = match &limit {
        Some(limit) => count(limit, "output").map_err(|e| format!("limit.{e}"))?.filter(|&n| n > 0),
        None => None,
    };
    Ok(Some(ImportedPrice { cost_usd_per_mtok: base, tiers: tiers.into_iter().collect(), max_output_tokens }))
}

/// Reads a price map and imports it through the store: what both
/// `POST /v1/model-imports` and `creditd models import` do. `Err` when the
/// file is not a price map or the store fails; an import refused for a
/// large move is an `Ok` report with `applied: false` and `needs_force` rows.
pub async fn run(
    store: &dyn Store,
    format: Format,
    bytes: &[u8],
    filter: &Filter,
    options: ImportOptions,
    dry_run: bool,
) -> Result<ImportReportOut, ApiError> {
    let parsed = parse(format, bytes, filter).map_err(ApiError::invalid)?;
    let import = ModelImport { format: format.as_str().to_string(), models: parsed.models.clone(), options, dry_run };
    let reply = store.execute(Command::ImportModels { import }, None).await?;
    let Reply::Imported(outcome) = reply else { return Err(unexpected(&reply)) };
    Ok(ImportReportOut::new(format.as_str(), dry_run, &parsed, &outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Option<Usd> {
        Some(Usd::parse(s).unwrap())
    }

    #[test]
    fn litellm_entries_convert_exactly_with_tiers() {
        let file = br#"{
            "sample_spec": {"input_cost_per_token": 0.0, "mode": "one of: chat"},
            "gemini-x": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                "input_cost_per_token_above_200k_tokens": 2.5e-06, "output_cost_per_token_above_200k_tokens": 1.5e-05,
                "cache_read_input_token_cost": 3.125e-07, "cache_creation_input_token_cost_above_1hr": 4e-06,
                "input_cost_per_token_priority": 9e-06, "max_output_tokens": 65535, "litellm_provider": "gemini",
                "mode": "chat", "supports_vision": true},
            "dall-e": {"output_cost_per_pixel": 1e-08, "mode": "image_generation", "litellm_provider": "openai"},
            "noisy": {"input_cost_per_token": 2.0000000000000002e-07, "output_cost_per_token": 1e-06, "litellm_provider": "x"},
            "texty": {"input_cost_per_token": "0.000001", "litellm_provider": "x"}
        }"#;
        let parsed = parse(Format::Litellm, file, &Filter::default()).unwrap();
        assert_eq!(parsed.models.len(), 1);
        let (id, price) = &parsed.models[0];
        assert_eq!(id, "gemini-x");
        assert_eq!(price.cost_usd_per_mtok.input, usd("1.25"));
        assert_eq!(price.cost_usd_per_mtok.output, usd("10"));
        assert_eq!(price.cost_usd_per_mtok.cache_read, usd("0.3125"));
        assert_eq!(price.cost_usd_per_mtok.cache_write, None);
        assert_eq!(price.tiers.len(), 1);
        assert_eq!(price.tiers[0].0, 200_000);
        assert_eq!(price.tiers[0].1.input, usd("2.5"));
        assert_eq!(price.tiers[0].1.output, usd("15"));
        assert_eq!(price.max_output_tokens, Some(65535));
        let reasons: Vec<_> = parsed.skipped.iter().map(|s| (s.id.as_str(), s.reason.as_str())).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons.contains(&("dall-e", "no per-token price (mode image_generation)")));
        assert!(reasons.iter().any(|(id, r)| *id == "noisy" && r.contains("more than 6 decimals")));
        assert!(reasons.iter().any(|(id, r)| *id == "texty" && r.contains("is not a number")));

        let only = Filter { providers: vec!["openai".into()], only: vec![] };
        let parsed = parse(Format::Litellm, file, &only).unwrap();
        assert_eq!(parsed.models.len(), 0);
        assert_eq!(parsed.filtered_out, 3);
    }

    #[test]
    fn modelsdev_tiers_and_providers() {
        let file = br#"{
            "google": {"id": "google", "name": "Google", "models": {
                "gemini-2.5-pro": {"id": "gemini-2.5-pro", "cost": {"input": 1.25, "output": 10, "cache_read": 0.31,
                    "context_over_200k": {"input": 2.5, "output": 15, "cache_read": 0.625}},
                    "limit": {"context": 1048576, "output": 65536}},
                "gpt-5.5": {"cost": {"input": 5, "output": 30, "tiers": [
                    {"input": 10, "output": 45, "tier": {"type": "context", "size": 272000}}],
                    "context_over_200k": {"input": 7, "output": 40}}, "limit": {"context": 1, "output": 0}},
                "weird": {"cost": {"input": 1, "output": 2, "tiers": [{"input": 3, "tier": {"type": "time", "size": 5}}]}},
                "nocost": {"limit": {"output": 5}}
            }},
            "vertex": {"models": {"gemini-2.5-pro": {"cost": {"input": 1.25, "output": 10, "cache_read": 0.31,
                    "context_over_200k": {"input": 2.5, "output": 15, "cache_read": 0.625}}, "limit": {"output": 65536}},
                "gpt-5.5": {"cost": {"input": 6, "output": 30}}}}
        }"#;
        let parsed = parse(Format::Modelsdev, file, &Filter::default()).unwrap();
        let ids: Vec<_> = parsed.models.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["gemini-2.5-pro"]);
        let gemini = &parsed.models[0].1;
        assert_eq!(
            gemini.tiers,
            vec![(
                200_000,
                TokenRates { input: usd("2.5"), output: usd("15"), cache_read: usd("0.625"), cache_write: None }
            )]
        );
        assert_eq!(gemini.max_output_tokens, Some(65536));
        assert!(parsed.skipped.iter().any(|s| s.id == "gpt-5.5" && s.reason.contains("ambiguous")));
        assert!(parsed.skipped.iter().any(|s| s.id == "google/weird" && s.reason.contains("only context tiers")));
        assert!(parsed.skipped.iter().any(|s| s.id == "google/nocost" && s.reason == "no cost given"));

        let google = Filter { providers: vec!["google".into()], only: vec![] };
        let parsed = parse(Format::Modelsdev, file, &google).unwrap();
        let gpt = &parsed.models.iter().find(|(id, _)| id == "gpt-5.5").unwrap().1;
        // `tiers` wins over `context_over_200k`.
        assert_eq!(gpt.tiers.iter().map(|t| t.0).collect::<Vec<_>>(), [272_000]);
        assert_eq!(gpt.max_output_tokens, None);
    }

    #[test]
    fn a_file_that_is_not_an_object_is_an_error() {
        assert!(parse(Format::Litellm, b"[1, 2]", &Filter::default()).is_err());
        assert!(parse(Format::Modelsdev, b"{", &Filter::default()).is_err());
    }
}
