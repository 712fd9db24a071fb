//! What every handler shares.

use std::ops::Deref;
use std::sync::Arc;

use creditd_store::{Clock, ManualClock, Store};

use crate::ServerConfig;
use crate::auth::{KeyCache, ProxyKeyCache};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub test_clock: Option<Arc<ManualClock>>,
    pub config: ServerConfig,
    pub(crate) keys: KeyCache,
    pub(crate) proxy_keys: ProxyKeyCache,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        test_clock: Option<Arc<ManualClock>>,
        config: ServerConfig,
    ) -> Self {
        AppState(Arc::new(Inner {
            store,
            clock,
            test_clock,
            config,
            keys: KeyCache::default(),
            proxy_keys: ProxyKeyCache::default(),
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
