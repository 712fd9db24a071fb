//! `creditd serve`: wires the configuration, a store, a clock and the API,
//! and shuts down cleanly on SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use creditd_core::config_apply::{ConfigDecision, ConfigWinner};
use creditd_core::plan::Plan;
use creditd_core::subscription::SubscriptionKind;
use creditd_server::dto::{ModelOut, PlanOut};
use creditd_server::payments::{CreemConfig, NowPaymentsConfig, PaymentsConfig, Product, WebhookSecret};
use creditd_server::{App, ServerConfig};
use creditd_store::{Clock, Command, ConfigApply, ConfigEntry, ConfigKind, ManualClock, Reply, Store, SystemClock};
use jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Failure;
use crate::cli::{ConfigSide, ServeArgs};
use crate::commands::{database, open_store};
use crate::config::{self, Config};
use crate::net;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub async fn serve(args: ServeArgs) -> Result<(), Failure> {
    // Take over SIGTERM before anything is printed, so a supervisor that
    // stops us as soon as we are listening gets a clean shutdown.
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only"))
        .ok();
    // Before any descriptor is opened: the store, the listener, the connections.
    let nofile = net::raise_nofile_limit();
    let file = config::locate(args.config.as_deref());
    let config = Config::load(file.as_deref())?;
    match &config.file {
        Some(path) => tracing::info!(file = %path.display(), "configuration read"),
        None => tracing::info!("no configuration file: built-in defaults (see `creditd init`)"),
    }
    let url = args.db.clone().unwrap_or_else(|| config.database.url.clone());
    // Where the address came from, for the messages below.
    let (listen, listen_origin) = match &args.listen {
        Some(flag) => (flag.clone(), "--listen (or CREDITD_LISTEN)".to_string()),
        None => (
            config.server.listen.clone(),
            match &config.file {
                Some(file) => format!("server.listen in {} or the built-in default", file.display()),
                None => "server.listen, the built-in default".to_string(),
            },
        ),
    };
    config::check_listen(&listen).map_err(|why| Failure::usage(format!("invalid `{listen_origin}`: {why}")))?;
    let admin_key = args
        .admin_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| config.server.admin_key.as_ref().map(|k| k.expose().to_string()));
    let database = database(&url)?;

    // Bind before anything is created: a port in use stops the start before
    // an admin key is made and printed (and lost with the failed start).
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| Failure::runtime(format!("cannot listen on {listen} (from {listen_origin}): {e}")))?;
    let local = listener.local_addr().map_err(|e| Failure::runtime(format!("cannot read the bound address: {e}")))?;

    let (clock, test_clock): (Arc<dyn Clock>, Option<Arc<ManualClock>>) = if args.test_clock {
        let manual = Arc::new(ManualClock::new(Timestamp::now()));
        tracing::warn!("test clock: time moves only through POST /v1/test/clock");
        (manual.clone(), Some(manual))
    } else {
        (Arc::new(SystemClock), None)
    };

    let store = open_store(&database, config.engine(), clock.clone())?;
    tracing::info!(database = %database, "store open");
    let on_conflict = args.on_config_conflict.map(|side| match side {
        ConfigSide::Config => ConfigWinner::Config,
        ConfigSide::Api => ConfigWinner::Api,
    });
    apply_config(store.as_ref(), &config, on_conflict).await?;
    let delivery = sync_endpoints(store.as_ref(), &config, clock.now()).await?;

    if let Some(secret) = creditd_server::ensure_admin_key(store.as_ref(), admin_key.as_deref())
        .await
        .map_err(|e| Failure::runtime(format!("cannot create the admin key: {e}")))?
    {
        // Printed, never logged: this is the only time the secret exists outside the caller.
        println!("admin key (shown once, store it now): {secret}");
        println!("(lost it? `creditd keys create --role admin` makes another)");
    }

    let server_config = ServerConfig {
        engine: config.engine(),
        min_topup_usd: config.min_topup_usd(),
        admin_key: admin_key.clone(),
        payments: payments(&config),
        body_read_timeout: Some(Duration::from_secs(config.server.body_timeout_seconds)),
        dashboard: creditd_server::dashboard::DashboardConfig {
            public_url: config.server.public_url.clone(),
            currencies: config.display.currencies.iter().map(|(c, r)| (c.clone(), *r)).collect(),
            creem: config.payments.creem.api_key.as_ref().map(|key| {
                let base = config.payments.creem.api_base.as_deref().unwrap_or("https://api.creem.io");
                creditd_server::dashboard::ProviderApi::new(key.expose(), base)
            }),
            nowpayments: config.payments.nowpayments.api_key.as_ref().map(|key| {
                let base = config.payments.nowpayments.api_base.as_deref().unwrap_or("https://api.nowpayments.io");
                creditd_server::dashboard::ProviderApi::new(key.expose(), base)
            }),
            products: config
                .payments
                .creem
                .product_display
                .iter()
                .map(|(id, (label, price_usd))| {
                    let display =
                        creditd_server::dashboard::ProductDisplay { label: label.clone(), price_usd: *price_usd };
                    (id.clone(), display)
                })
                .collect(),
        },
    };
    let creem_api = server_config.dashboard.creem.clone();
    let app = App::new(store.clone(), clock, test_clock, server_config);
    // Events committed before a crash are still pending: the worker sends them.
    let worker = creditd_server::delivery::spawn(store.clone(), delivery);
    // Provider calls too (Creem's subscription cancels); without an API key
    // they wait, pending, until one is configured.
    let calls_worker = match creem_api {
        Some(api) => {
            let config = creditd_server::provider_calls::ProviderCallConfig::new(api);
            Some(creditd_server::provider_calls::spawn(store.clone(), config))
        }
        None => {
            if config.payments.creem.webhook_secret.is_some() {
                tracing::warn!(
                    "payments.creem.api_key is not set: creditd cannot cancel Creem subscriptions it replaces or \
                     that are cancelled in creditd; the calls wait as pending provider calls (GET /v1/provider-calls)"
                );
            }
            None
        }
    };
    // The proxy's routes are always served: a provider without an upstream
    // answers `404 not_found` in its own error shape (docs/proxy.md).
    let router = app.router_with(proxy(&config, &app)?.mount());

    println!("listening on http://{local}");
    let _ = std::io::stdout().flush();
    tracing::info!(address = %local, "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = tokio::spawn(async move {
        shutdown_signal(terminate).await;
        let _ = stop_tx.send(true);
    });
    let mut graceful = stop_rx.clone();
    let limits = net::Limits {
        max_connections: net::connection_cap(config.server.max_connections, nofile),
        header_read_timeout: Duration::from_secs(config.server.header_timeout_seconds),
        idle_timeout: Duration::from_secs(config.server.idle_timeout_seconds),
    };
    if limits.max_connections < config.server.max_connections {
        tracing::warn!(
            configured = config.server.max_connections,
            open_file_limit = nofile,
            cap = limits.max_connections,
            "server.max_connections lowered to fit the open-file limit"
        );
    }
    tracing::info!(
        open_file_limit = nofile,
        max_connections = limits.max_connections,
        header_timeout_seconds = config.server.header_timeout_seconds,
        body_timeout_seconds = config.server.body_timeout_seconds,
        idle_timeout_seconds = config.server.idle_timeout_seconds,
        "connection limits"
    );
    let server = net::serve(listener, router, limits, async move {
        let _ = graceful.wait_for(|stop| *stop).await;
        tracing::info!("shutting down: finishing in-flight requests");
    });
    let mut deadline = stop_rx;
    let outcome = tokio::select! {
        served = server => served.map_err(|e| Failure::runtime(format!("the server failed: {e}"))),
        _ = async move {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(seconds = SHUTDOWN_GRACE.as_secs(), "in-flight requests did not finish in time");
            Ok(())
        }
    };
    signals.abort();
    // An attempt cut short here is sent again after its lease (at least once).
    worker.abort();
    if let Some(w) = calls_worker {
        w.abort();
    }

    // Every acknowledged write is already committed (acknowledged means
    // durable). Drop the API first, then the last handle on the store: its
    // writer drains its queue, commits its last batch and is joined.
    drop(app);
    if Arc::strong_count(&store) > 1 {
        tracing::warn!("the store is still in use at shutdown; its writer stops when the last request ends");
    }
    drop(store);
    tracing::info!("stopped");
    outcome
}

/// The metering proxy (its routes answer `404` for a provider without an upstream).
fn proxy(config: &Config, app: &App) -> Result<creditd_proxy::Proxy, Failure> {
    let section = &config.proxy;
    let upstream = |u: &Option<config::UpstreamSection>| {
        u.as_ref()
            .map(|u| creditd_proxy::Upstream { base_url: u.base_url.clone(), api_key: u.api_key.expose().to_string() })
    };
    let proxy_config = creditd_proxy::ProxyConfig {
        openai: upstream(&section.openai),
        anthropic: upstream(&section.anthropic),
        aliases: section.aliases.clone().into_iter().collect(),
        max_body_bytes: section.max_body_bytes,
        first_byte_timeout: Duration::from_secs(section.first_byte_timeout_seconds),
        idle_timeout: Duration::from_secs(section.idle_timeout_seconds),
    };
    for (name, upstream) in [("openai", &proxy_config.openai), ("anthropic", &proxy_config.anthropic)] {
        if let Some(u) = upstream {
            tracing::info!(provider = name, base_url = %u.base_url, "metering proxy upstream");
        }
    }
    creditd_proxy::Proxy::new(app.state(), proxy_config).map_err(Failure::runtime)
}

/// Applies the configuration's models and plans (the rule:
/// `docs/configuration.md`, `creditd_core::config_apply`). The
/// configuration writes an entry only where it changed since it was last
/// applied and the store did not; an API edit of an entry the file did not
/// change stays; where both changed, the start stops (exit 2) and says what
/// differs, unless `--on-config-conflict` says which side wins.
async fn apply_config(store: &dyn Store, config: &Config, on_conflict: Option<ConfigWinner>) -> Result<(), Failure> {
    let apply = ConfigApply {
        models: config.models.iter().map(|(id, price)| (id.clone(), price.clone())).collect(),
        plans: config.core_plans(),
        on_conflict,
    };
    let reply = store
        .execute(Command::ApplyConfig { apply }, None)
        .await
        .map_err(|e| Failure::runtime(format!("cannot apply the configuration's models and plans: {e}")))?;
    let Reply::ConfigApplied(outcome) = reply else {
        return Err(Failure::runtime("unexpected reply from the store to applying the configuration"));
    };
    let source = match &config.file {
        Some(file) => file.display().to_string(),
        None => "the built-in defaults".to_string(),
    };
    if !outcome.applied {
        let mut text = String::from(
            "the configuration and the API both changed the same entries since the configuration was last \
             applied; nothing was written:\n",
        );
        for entry in outcome.entries.iter().filter(|e| e.decision == ConfigDecision::Conflict) {
            text.push_str(&conflict(store, config, entry, &source).await?);
        }
        text.push_str(&format!(
            "Resolve it: make {source} say what you want for each entry above (what the store has is \
             GET /v1/models/{{id}} or /v1/plans/{{id}}), or start once with --on-config-conflict config (the \
             configuration's entries replace the store's) or --on-config-conflict api (the store's stay, and \
             the configuration's entries count as applied). See docs/configuration.md."
        ));
        return Err(Failure::usage(text));
    }
    let mut written = 0;
    for entry in &outcome.entries {
        let (kind, id) = (entry.kind.as_str(), entry.id.as_str());
        let version = entry.price_version.map(|v| format!(" (price_version {v})")).unwrap_or_default();
        match (entry.decision, entry.resolved) {
            (ConfigDecision::Create | ConfigDecision::Update, _) => {
                written += 1;
                tracing::info!("{kind} {id:?}{version}: written from {source}");
            }
            (ConfigDecision::KeepEdit, _) => tracing::warn!(
                "{kind} {id:?}{version}: keeping the version changed through the API; {source} has not changed \
                 this entry since it was applied, so it does not describe what is in force (change the entry to \
                 apply it at the next start)"
            ),
            (ConfigDecision::Conflict, Some(ConfigWinner::Config)) => {
                written += 1;
                tracing::warn!(
                    "{kind} {id:?}{version}: changed both in {source} and through the API; \
                     --on-config-conflict config: the configuration's written"
                );
            }
            (ConfigDecision::Conflict, _) => tracing::warn!(
                "{kind} {id:?}{version}: changed both in {source} and through the API; \
                 --on-config-conflict api: the API's kept, the configuration's entry counts as applied"
            ),
            (ConfigDecision::Unchanged, _) => {}
        }
    }
    tracing::info!(
        models = config.models.len(),
        plans = config.core_plans().len(),
        written,
        "price book and plans: configuration applied"
    );
    Ok(())
}

/// One conflict for the operator: the entry, and each field on which the
/// configuration and the store differ.
async fn conflict(store: &dyn Store, config: &Config, entry: &ConfigEntry, source: &str) -> Result<String, Failure> {
    let read = |e: creditd_store::StoreError| Failure::runtime(format!("cannot read {}: {e}", entry.id));
    let shown = |v: serde_json::Result<serde_json::Value>| v.map_err(|e| Failure::runtime(e.to_string()));
    let (stored, configured, version) = match entry.kind {
        ConfigKind::Model => {
            let stored = store.model(&entry.id).await.map_err(read)?;
            let version = stored.as_ref().map(|m| m.price_version);
            let configured = config.models.get(&entry.id).map(|price| creditd_store::ModelVersion {
                id: entry.id.clone(),
                price_version: 0,
                price: price.clone(),
                created_at: jiff::Timestamp::UNIX_EPOCH,
            });
            let out = |m: &creditd_store::ModelVersion| shown(serde_json::to_value(ModelOut::from(m)));
            (stored.as_ref().map(out).transpose()?, configured.as_ref().map(out).transpose()?, version)
        }
        ConfigKind::Plan => {
            let plans = store.plans().await.map_err(read)?;
            let out = |p: &Plan| shown(serde_json::to_value(PlanOut::from(p)));
            let configured = config.core_plans().into_iter().find(|p| p.id == entry.id);
            (plans.get(&entry.id).map(out).transpose()?, configured.as_ref().map(out).transpose()?, None)
        }
    };
    let kind = entry.kind.as_str();
    let mut text = if entry.recorded {
        format!("  {kind} {:?}: changed in {source} and through the API\n", entry.id)
    } else {
        format!(
            "  {kind} {:?}: {source} and the store differ, and no earlier start recorded what the configuration \
             said (a database from before creditd kept that record), so which is newer cannot be told\n",
            entry.id
        )
    };
    let version = version.map(|v| format!(", price_version {v}")).unwrap_or_default();
    let (stored, configured) = (fields(stored.as_ref()), fields(configured.as_ref()));
    for (field, in_config) in &configured {
        let in_store = stored.get(field).map_or("(absent)", String::as_str);
        if in_store != in_config {
            text.push_str(&format!("    {field}: {in_config} in {source}; {in_store} in the store{version}\n"));
        }
    }
    Ok(text)
}

/// A model or plan as the API shows it, flattened to `a.b` paths, without
/// what the API adds (ids, versions, derived pools).
fn fields(value: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&path, item, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Some(value) = value {
        walk("", value, &mut out);
    }
    for derived in ["id", "price_version", "created_at", "main_pool", "backup_pool", "budget_usd"] {
        out.remove(derived);
    }
    out
}

/// `[webhooks.endpoints]` into the store (without their secrets, which the
/// delivery worker keeps in memory), and the worker's settings.
async fn sync_endpoints(
    store: &dyn Store,
    config: &Config,
    now: Timestamp,
) -> Result<creditd_server::delivery::DeliveryConfig, Failure> {
    let section = &config.webhooks;
    let endpoints = section
        .endpoints
        .iter()
        .map(|(id, e)| creditd_store::Endpoint {
            id: id.clone(),
            url: e.url.clone(),
            secret: None,
            events: e.events.clone(),
            enabled: e.enabled,
            from_config: true,
            created_at: now,
            updated_at: now,
        })
        .collect();
    store
        .execute(creditd_store::Command::SyncConfigEndpoints { endpoints }, None)
        .await
        .map_err(|e| Failure::runtime(format!("cannot store the webhook endpoints of the configuration: {e}")))?;
    Ok(creditd_server::delivery::DeliveryConfig {
        poll: Duration::from_millis(section.poll_interval_ms),
        timeout: Duration::from_secs(section.timeout_seconds),
        secrets: section.endpoints.iter().map(|(id, e)| (id.clone(), e.secret.expose().to_string())).collect(),
        ..Default::default()
    })
}

/// `[payments.*]` for the API: a provider's webhooks are served once its
/// secret is configured (in the file or the environment). Secrets are never
/// logged; only which providers are on.
fn payments(config: &Config) -> PaymentsConfig {
    let p = &config.payments;
    let creem = p.creem.webhook_secret.as_ref().map(|secret| CreemConfig {
        webhook_secret: WebhookSecret::new(secret.expose()),
        products: p
            .creem
            .products
            .iter()
            .map(|(id, product)| {
                let product = match product {
                    config::Product::Topup => Product::Topup,
                    config::Product::Credits(credits) => Product::Credits(*credits),
                    config::Product::Plan { plan, kind } => Product::Plan {
                        plan: plan.clone(),
                        kind: match kind {
                            config::SubscriptionKind::Monthly => SubscriptionKind::Monthly,
                            config::SubscriptionKind::Pass30d => SubscriptionKind::Pass30d,
                        },
                    },
                };
                (id.clone(), product)
            })
            .collect(),
    });
    let nowpayments = p
        .nowpayments
        .ipn_secret
        .as_ref()
        .map(|secret| NowPaymentsConfig { ipn_secret: WebhookSecret::new(secret.expose()) });
    tracing::info!(
        creem = creem.is_some(),
        creem_products = p.creem.products.len(),
        nowpayments = nowpayments.is_some(),
        "payment webhooks"
    );
    PaymentsConfig { creem, nowpayments }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal(terminate: Option<tokio::signal::unix::Signal>) {
    match terminate {
        Some(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payments_are_wired_from_the_configuration_and_secrets_stay_hidden() {
        let config = Config::from_toml(
            r#"
            [payments.creem]
            webhook_secret = "whsec_very_secret"
            [payments.creem.products]
            prod_topup = { topup = true }
            prod_pack = { credits = "500" }
            prod_pro = { plan = "pro", kind = "monthly" }
            prod_pass = { plan = "pro", kind = "pass_30d" }
            [payments.nowpayments]
            ipn_secret = "ipn_very_secret"
            "#,
        )
        .expect("valid");
        let p = payments(&config);
        let creem = p.creem.as_ref().expect("creem on");
        assert_eq!(creem.products["prod_topup"], Product::Topup);
        assert_eq!(creem.products["prod_pack"], Product::Credits(creditd_core::Credits::whole(500)));
        assert_eq!(creem.products["prod_pro"], Product::Plan { plan: "pro".into(), kind: SubscriptionKind::Monthly });
        assert_eq!(creem.products["prod_pass"], Product::Plan { plan: "pro".into(), kind: SubscriptionKind::Pass30d });
        assert!(p.nowpayments.is_some());
        let shown = format!("{p:?}");
        assert!(!shown.contains("very_secret"), "{shown}");
        // Without a secret a provider's webhooks are off.
        let p = payments(&Config::builtin());
        assert!(p.creem.is_none() && p.nowpayments.is_none());
    }
}
