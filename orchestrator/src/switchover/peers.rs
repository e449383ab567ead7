//! `[proxy] peers`: the other proxies a switchover drives. A peer is one admin URL
//! (`https://host:port`, or `http://` on loopback), or a DNS name standing for
//! every proxy it resolves to (`dns+https://pgcutover-peers.ns.svc:9187`, a
//! Kubernetes headless Service): resolved at the start of each run, so replicas
//! added or removed between runs are simply found or not. No membership layer of
//! our own: DNS already knows who is there.

use super::proxies::RemoteProxy;
use pgcutover_config::AdminToken;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// One `[proxy] peers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    /// One proxy at this admin URL.
    Url(String),
    /// Every proxy `host` resolves to, each at `port`; `url` is the entry without
    /// its `dns+`, which names them (Host header, certificate name).
    Dns {
        /// `http://host:port` or `https://host:port`.
        url: String,
        /// The name to resolve.
        host: String,
        /// Their admin port.
        port: u16,
    },
}

impl PeerSpec {
    /// Reads one entry; the error names it and the expected forms.
    pub fn parse(entry: &str) -> Result<PeerSpec, String> {
        let Some(url) = entry.strip_prefix("dns+") else {
            return Ok(PeerSpec::Url(entry.to_owned()));
        };
        let expected = || {
            format!("peer {entry:?}: expected dns+https://name:port (or dns+http://name:port for loopback), a DNS name for every proxy's admin API")
        };
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(expected)?
            .trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(expected)?;
        let port: u16 = port.parse().map_err(|_| expected())?;
        if host.is_empty() || host.contains('/') || host.starts_with('[') {
            return Err(expected());
        }
        Ok(PeerSpec::Dns {
            url: url.trim_end_matches('/').to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

/// Checks every entry without resolving a name (at start, so that a typo, or an
/// `https://` peer without a CA, fails there and not at a switchover).
pub fn check_peers(peers: &[String], token: Option<&AdminToken>, ca_file: Option<&Path>) -> Result<(), String> {
    for entry in peers {
        if let PeerSpec::Url(url) = PeerSpec::parse(entry)? {
            RemoteProxy::new(&url, token.cloned(), ca_file)?;
        }
    }
    Ok(())
}

/// The proxies `peers` stand for now: DNS names resolved to every address, less
/// this process's own admin API at `own_admin` (a headless Service lists the pod
/// that asks, too), each address once.
pub async fn resolve_peers(
    peers: &[String],
    own_admin: SocketAddr,
    token: Option<&AdminToken>,
    ca_file: Option<&Path>,
) -> Result<Vec<RemoteProxy>, String> {
    let mut proxies = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in peers {
        match PeerSpec::parse(entry)? {
            PeerSpec::Url(url) => proxies.push(RemoteProxy::new(&url, token.cloned(), ca_file)?),
            PeerSpec::Dns { url, host, port } => {
                let addrs = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|e| format!("peer {entry:?}: cannot resolve {host}: {e}"))?;
                let addrs: BTreeSet<SocketAddr> = addrs.collect();
                for addr in addrs {
                    if is_own(addr, own_admin) || !seen.insert(addr) {
                        continue;
                    }
                    proxies.push(RemoteProxy::at(&url, addr, token.cloned(), ca_file)?);
                }
            }
        }
    }
    Ok(proxies)
}

/// Whether `addr` is this process's admin API listening on `own`: the same
/// address, or, when it listens on every interface, an address of this host at
/// its port (an address is this host's when a socket can be bound to it).
fn is_own(addr: SocketAddr, own: SocketAddr) -> bool {
    addr == own || (own.ip().is_unspecified() && addr.port() == own.port() && is_local(addr.ip()))
}

fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_urls_and_dns_names() {
        assert_eq!(
            PeerSpec::parse("https://10.0.0.2:9187").unwrap(),
            PeerSpec::Url("https://10.0.0.2:9187".into())
        );
        assert_eq!(
            PeerSpec::parse("dns+https://pgcutover-peers.ns.svc:9187/").unwrap(),
            PeerSpec::Dns {
                url: "https://pgcutover-peers.ns.svc:9187".into(),
                host: "pgcutover-peers.ns.svc".into(),
                port: 9187
            }
        );
        for bad in [
            "dns+pgcutover:9187",
            "dns+https://name",
            "dns+http://name:port",
            "dns+http://:9187",
            "dns+http://a/b:1",
        ] {
            let e = PeerSpec::parse(bad).unwrap_err();
            assert!(e.contains("dns+https://name:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn its_own_admin_api_is_not_a_peer() {
        let own: SocketAddr = "127.0.0.2:9187".parse().unwrap();
        assert!(is_own(own, own));
        assert!(!is_own("127.0.0.3:9187".parse().unwrap(), own));
        let everywhere: SocketAddr = "0.0.0.0:9187".parse().unwrap();
        assert!(
            is_own("127.0.0.3:9187".parse().unwrap(), everywhere),
            "loopback is this host's"
        );
        assert!(!is_own("127.0.0.3:9188".parse().unwrap(), everywhere));
        assert!(
            !is_own("192.0.2.1:9187".parse().unwrap(), everywhere),
            "TEST-NET-1 is nobody's here"
        );
    }

    #[tokio::test]
    async fn a_name_stands_for_every_address_less_this_proxy() {
        let own: SocketAddr = "127.0.0.1:9187".parse().unwrap();
        // localhost: 127.0.0.1 (this proxy) and perhaps ::1.
        let peers = resolve_peers(&["dns+http://localhost:9187".into()], own, None, None)
            .await
            .unwrap();
        let urls: Vec<&str> = peers.iter().map(|p| p.url()).collect();
        assert!(urls.iter().all(|u| !u.ends_with("at 127.0.0.1:9187")), "{urls:?}");
        let e = resolve_peers(&["dns+http://no-such-name.invalid:9187".into()], own, None, None)
            .await
            .err()
            .unwrap();
        assert!(e.contains("cannot resolve no-such-name.invalid"), "{e}");
    }
}
