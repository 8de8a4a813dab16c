//! The `env` provider: a variable of kz's own environment (for CI systems that already inject
//! secrets, so a config can name them alongside everything else).

use std::sync::Arc;

use super::{BoxFuture, Provider, ProviderError, Request};
use crate::env::Env;
use crate::secret::SecretValue;

pub struct EnvProvider {
    env: Arc<dyn Env>,
}

impl EnvProvider {
    pub fn new(env: Arc<dyn Env>) -> Self {
        EnvProvider { env }
    }
}

impl Provider for EnvProvider {
    fn resolve<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async move {
            self.env
                .var(&req.reference)
                .map(SecretValue::new)
                .ok_or_else(|| ProviderError::not_found("variable not set"))
        })
    }
}
