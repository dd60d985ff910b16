//! What the gateway plugins share, independent of their bindings: header
//! lookup, the client address behind trusted proxies, CIDR lists, and
//! oauth2-proxy's e-mail list semantics. Plain Rust, so it is unit tested on
//! the host.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Every value of header `name` (case-insensitive), in order.
pub fn header_values<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>, name: &str) -> Vec<&'a str> {
    headers.into_iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v).collect()
}

/// A list of networks, IPv4 and IPv6. A bare address is a host route
/// (`/32` or `/128`).
#[derive(Debug, Clone, Default)]
pub struct Cidrs(Vec<IpNet>);

impl Cidrs {
    /// Parses each entry, naming the first bad one.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = entry.trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(format!("{entry:?} is not an IP address or CIDR")),
                },
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    /// True when `ip` is in one of the networks. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The TCP peer's address from the gateway's `ip:port`.
pub fn peer_ip(client_addr: &str) -> Option<IpAddr> {
    client_addr.parse::<SocketAddr>().ok().map(|a| canonical(a.ip())).or_else(|| client_addr.parse().ok())
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy;
/// then `X-Forwarded-For` is read from the right, skipping trusted proxies,
/// and the first address that is not one is the client. A client-sent
/// `X-Forwarded-For` reaching the gateway directly is never read.
/// `Err` when a trusted proxy sent an entry that is not an address.
pub fn client_ip(client_addr: &str, forwarded_for: &[&str], trusted: &Cidrs) -> Result<IpAddr, String> {
    let peer = peer_ip(client_addr).ok_or_else(|| format!("peer address {client_addr:?} is not an address"))?;
    if !trusted.contains(peer) {
        return Ok(peer);
    }
    let mut client = peer;
    for entry in forwarded_for.iter().flat_map(|h| h.split(',')).rev() {
        let entry = entry.trim();
        let ip = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
            .ok_or_else(|| format!("X-Forwarded-For entry {entry:?} is not an address"))?;
        client = canonical(ip);
        if !trusted.contains(client) {
            break;
        }
    }
    Ok(client)
}

/// oauth2-proxy's authenticated-emails semantics: exact addresses compared
/// case-insensitively, `example.com` for every address at that domain (not
/// its subdomains), `.example.com` for its subdomains only, and `*` for
/// every well-formed address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmailList {
    addresses: Vec<String>,
    domains: Vec<String>,
    subdomains_of: Vec<String>,
    /// `*` was listed: every address passes.
    pub allow_all: bool,
}

impl EmailList {
    /// Parses entries (addresses, domain rules, `*`), each trimmed; blank
    /// entries and `#` comments are skipped, so the lines of an
    /// authenticated-emails file can be given as they are.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut list = EmailList::default();
        for raw in entries {
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let lower = entry.to_lowercase();
            if lower == "*" {
                list.allow_all = true;
            } else if lower.contains('@') {
                if !well_formed(&lower) {
                    return Err(format!("{entry:?} is not an e-mail address"));
                }
                list.addresses.push(lower);
            } else if let Some(parent) = lower.strip_prefix('.') {
                if !is_domain(parent) {
                    return Err(format!("{entry:?} is not a domain rule"));
                }
                list.subdomains_of.push(parent.to_string());
            } else {
                if !is_domain(&lower) {
                    return Err(format!("{entry:?} is neither an e-mail address nor a domain"));
                }
                list.domains.push(lower);
            }
        }
        Ok(list)
    }

    /// Whether `email` passes. An address with other than exactly one `@`,
    /// or nothing on either side of it, never does.
    pub fn allows(&self, email: &str) -> Result<(), &'static str> {
        let email = email.trim().to_lowercase();
        if !well_formed(&email) {
            return Err("email-malformed");
        }
        if self.allow_all || self.addresses.contains(&email) {
            return Ok(());
        }
        let domain = email.rsplit('@').next().unwrap_or_default();
        if self.domains.iter().any(|d| d == domain) {
            return Ok(());
        }
        if self.subdomains_of.iter().any(|parent| {
            domain.strip_suffix(parent.as_str()).is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
        }) {
            return Ok(());
        }
        Err("email-not-listed")
    }

    /// Entries, counted.
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len() + self.subdomains_of.len() + usize::from(self.allow_all)
    }

    /// True when nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Exactly one `@`, text on both sides, no spaces.
pub fn well_formed(address: &str) -> bool {
    let mut parts = address.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None)
        if !l.is_empty() && !d.is_empty() && !address.contains(char::is_whitespace))
}

fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Cidrs {
        Cidrs::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn cidr_lists_take_v4_v6_and_bare_addresses() {
        let list = cidrs(&["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"]);
        assert!(list.contains("203.0.113.7".parse().unwrap()));
        assert!(!list.contains("203.0.113.8".parse().unwrap()));
        assert!(list.contains("10.1.2.3".parse().unwrap()));
        assert!(list.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(list.contains("2001:db8::1".parse().unwrap()));
        assert!(!list.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidrs::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(Cidrs::parse(&["example.com".into()]).is_err());
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        // Direct client: its own X-Forwarded-For is ignored.
        assert_eq!(client_ip("198.51.100.9:5000", &["203.0.113.7"], &trusted), Ok("198.51.100.9".parse().unwrap()));
        // Through a trusted proxy: the rightmost untrusted entry.
        assert_eq!(
            client_ip("10.0.0.2:5000", &["1.1.1.1, 203.0.113.7", "10.0.0.9"], &trusted),
            Ok("203.0.113.7".parse().unwrap())
        );
        // Trusted proxy without X-Forwarded-For: the proxy itself.
        assert_eq!(client_ip("10.0.0.2:5000", &[], &trusted), Ok("10.0.0.2".parse().unwrap()));
        assert!(client_ip("10.0.0.2:5000", &["not-an-ip"], &trusted).is_err());
        assert_eq!(client_ip("[2001:db8::5]:443", &[], &trusted), Ok("2001:db8::5".parse().unwrap()));
    }

    #[test]
    fn email_lists_follow_oauth2_proxy() {
        let list = EmailList::parse(
            "# admins\n Alice@Example.org \n\nbob@example.org\nexample.com\n.corp.example.net\n".lines(),
        )
        .unwrap();
        assert_eq!(list.allows("alice@example.org"), Ok(()));
        assert_eq!(list.allows("ALICE@EXAMPLE.ORG"), Ok(()));
        assert_eq!(list.allows("carol@example.org"), Err("email-not-listed"));
        assert_eq!(list.allows("anyone@example.com"), Ok(()));
        assert_eq!(list.allows("anyone@sub.example.com"), Err("email-not-listed"));
        assert_eq!(list.allows("dev@eu.corp.example.net"), Ok(()));
        assert_eq!(list.allows("dev@corp.example.net"), Err("email-not-listed"));
        assert_eq!(list.allows("dev@xcorp.example.net"), Err("email-not-listed"));
        assert_eq!(list.allows("a@b@example.com"), Err("email-malformed"));
        assert_eq!(list.allows("@example.com"), Err("email-malformed"));
        assert_eq!(list.allows("example.com"), Err("email-malformed"));
        let all = EmailList::parse(["*"]).unwrap();
        assert!(all.allow_all && all.allows("x@y.z").is_ok() && all.allows("").is_err());
        assert!(EmailList::parse(["not an address@"]).is_err());
    }
}
