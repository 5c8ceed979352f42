use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// Bad provider configuration; the message says what to change.
    #[error("{provider}: {message}")]
    Config { provider: String, message: String },
    /// The provider's API refused or failed; `retry` when trying later may help (capacity,
    /// throttling, network) rather than never (permissions, bad image).
    #[error("{provider}: {message}")]
    Api {
        provider: String,
        message: String,
        retry: bool,
    },
}

impl Error {
    pub fn api(provider: &str, message: impl Into<String>, retry: bool) -> Self {
        Error::Api {
            provider: provider.to_string(),
            message: message.into(),
            retry,
        }
    }

    pub fn config(provider: &str, message: impl Into<String>) -> Self {
        Error::Config {
            provider: provider.to_string(),
            message: message.into(),
        }
    }
}
