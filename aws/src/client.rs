//! The RDS client: credentials from the SDK's default chain, rustls on ring (the
//! proxy's own TLS stack, so the tree has one), and `[aws] endpoint_url` for tests.

use aws_config::{BehaviorVersion, Region};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use pgcutover_config::AwsConfig;

/// An RDS client for `config`.
pub async fn connect(config: &AwsConfig) -> aws_sdk_rds::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let mut rds = aws_sdk_rds::config::Builder::from(&sdk);
    if config.endpoint_url.is_some() {
        // A test endpoint (moto) answers 500 for calls it lacks: retrying them only
        // makes the test slow.
        rds = rds.retry_config(aws_config::retry::RetryConfig::disabled());
    }
    aws_sdk_rds::Client::from_conf(rds.build())
}
