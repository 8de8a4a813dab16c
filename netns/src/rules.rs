//! Redirect rules, generated as text (pure) for the two backends a machine may have: an nftables
//! ruleset for `nft -f -`, or `iptables-restore` input for IPv4 and IPv6. Both are applied
//! atomically by their tool. Loopback-to-loopback traffic stays local; every other TCP
//! connection goes to kz's transparent port; DNS (UDP and TCP 53) goes to kz's resolver; all
//! other egress is rejected so clients fail fast (QUIC falls back to TCP). Traffic of the
//! excluded uids (kz itself, in a pod) and to excluded destination ports is left alone.

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub proxy_port: u16,
    pub dns_port: u16,
    /// Their traffic is neither redirected nor rejected (kz's own uid in a pod).
    pub exclude_uids: Vec<u32>,
    /// Outbound TCP destination ports that are neither redirected nor rejected.
    pub exclude_ports: Vec<u16>,
    /// Destination networks (any protocol) that are neither redirected nor rejected.
    pub exclude_cidrs: Vec<Cidr>,
}

/// A network such as `10.0.0.0/8` or `fd00::/8`, checked: the address has no bits past the
/// prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not a network such as 10.0.0.0/8 or fd00::/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?
        };
        let bits: u128 = match addr {
            std::net::IpAddr::V4(v) => u32::from(v) as u128,
            std::net::IpAddr::V6(v) => u128::from(v),
        };
        let host_bits = (max - prefix) as u32;
        if host_bits > 0 && bits & ((1u128 << host_bits) - 1) != 0 {
            return Err(format!("{s:?} has address bits past its prefix"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which tool applies the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Iptables,
}

/// The nftables table kz owns.
pub const NFT_TABLE: &str = "keyzero";

fn set<T: std::fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", inner.join(", "))
}

/// An nftables ruleset. The leading `table`/`delete table` pair makes it idempotent: applying it
/// twice replaces kz's table with an identical one in one transaction.
pub fn nft_ruleset(spec: &RuleSpec) -> String {
    let mut nat = Vec::new();
    // Replies of accepted connections (inbound ones included: a Service, a kubelet probe) and
    // the ICMP errors that belong to them pass first; so does IPv6 neighbour discovery, without
    // which no IPv6 packet leaves. Only new outbound connections meet the rules below.
    let mut filter = vec![
        "ct state established,related accept".to_string(),
        "meta l4proto ipv6-icmp icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept".to_string(),
    ];
    if !spec.exclude_uids.is_empty() {
        nat.push(format!("meta skuid {} return", set(&spec.exclude_uids)));
        filter.push(format!("meta skuid {} accept", set(&spec.exclude_uids)));
    }
    nat.push("ip daddr 127.0.0.0/8 return".to_string());
    nat.push("ip6 daddr ::1 return".to_string());
    let (v4, v6): (Vec<&Cidr>, Vec<&Cidr>) =
        spec.exclude_cidrs.iter().partition(|c| c.addr.is_ipv4());
    for (family, nets) in [("ip", &v4), ("ip6", &v6)] {
        if !nets.is_empty() {
            let list = set(nets);
            nat.push(format!("{family} daddr {list} return"));
            filter.push(format!("{family} daddr {list} accept"));
        }
    }
    if !spec.exclude_ports.is_empty() {
        nat.push(format!("tcp dport {} return", set(&spec.exclude_ports)));
        filter.push(format!("tcp dport {} accept", set(&spec.exclude_ports)));
    }
    nat.push(format!("udp dport 53 redirect to :{}", spec.dns_port));
    nat.push(format!("tcp dport 53 redirect to :{}", spec.dns_port));
    nat.push(format!("meta l4proto tcp redirect to :{}", spec.proxy_port));
    filter.push("ip daddr 127.0.0.0/8 accept".to_string());
    filter.push("ip6 daddr ::1 accept".to_string());
    filter.push("meta l4proto tcp reject with tcp reset".to_string());
    filter.push("reject".to_string());
    let indent = |rules: &[String]| {
        rules
            .iter()
            .map(|r| format!("    {r}\n"))
            .collect::<String>()
    };
    format!(
        "table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n  chain output_nat {{\n    type nat hook output priority -100; policy accept;\n{}  }}\n  chain output_filter {{\n    type filter hook output priority 0; policy accept;\n{}  }}\n}}\n",
        indent(&nat),
        indent(&filter),
        t = NFT_TABLE,
    )
}

/// The chain kz owns in the `nat` and `filter` tables (iptables backend), jumped to from
/// `OUTPUT`; rules of other owners in those tables are left as they are.
pub const IPT_CHAIN: &str = "KEYZERO_OUTPUT";

/// `iptables-restore --noflush` (or with `v6`, `ip6tables-restore --noflush`) input: kz's chain
/// in `nat` and in `filter`, created or emptied and filled, so applying it twice leaves the same
/// state; `jump_nat` / `jump_filter` add the jump from `OUTPUT` (only when it is missing, which
/// the caller checks: restore input cannot say "if absent").
pub fn iptables_restore(spec: &RuleSpec, v6: bool, jump_nat: bool, jump_filter: bool) -> String {
    let lo = if v6 { "::1/128" } else { "127.0.0.0/8" };
    let udp_reject = if v6 {
        "icmp6-port-unreachable"
    } else {
        "icmp-port-unreachable"
    };
    let c = IPT_CHAIN;
    let mut out = format!("*nat\n:{c} - [0:0]\n");
    for uid in &spec.exclude_uids {
        out.push_str(&format!("-A {c} -m owner --uid-owner {uid} -j RETURN\n"));
    }
    out.push_str(&format!("-A {c} -d {lo} -j RETURN\n"));
    let nets: Vec<&Cidr> = spec
        .exclude_cidrs
        .iter()
        .filter(|n| n.addr.is_ipv6() == v6)
        .collect();
    for n in &nets {
        out.push_str(&format!("-A {c} -d {n} -j RETURN\n"));
    }
    for port in &spec.exclude_ports {
        out.push_str(&format!("-A {c} -p tcp --dport {port} -j RETURN\n"));
    }
    out.push_str(&format!(
        "-A {c} -p udp --dport 53 -j REDIRECT --to-ports {}\n",
        spec.dns_port
    ));
    out.push_str(&format!(
        "-A {c} -p tcp --dport 53 -j REDIRECT --to-ports {}\n",
        spec.dns_port
    ));
    out.push_str(&format!(
        "-A {c} -p tcp -j REDIRECT --to-ports {}\n",
        spec.proxy_port
    ));
    if jump_nat {
        out.push_str(&format!("-I OUTPUT 1 -j {c}\n"));
    }
    out.push_str(&format!("COMMIT\n*filter\n:{c} - [0:0]\n"));
    out.push_str(&format!(
        "-A {c} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
    ));
    if v6 {
        for t in [
            "router-solicitation",
            "neighbour-solicitation",
            "neighbour-advertisement",
        ] {
            out.push_str(&format!(
                "-A {c} -p ipv6-icmp --icmpv6-type {t} -j ACCEPT\n"
            ));
        }
    }
    for uid in &spec.exclude_uids {
        out.push_str(&format!("-A {c} -m owner --uid-owner {uid} -j ACCEPT\n"));
    }
    out.push_str(&format!("-A {c} -d {lo} -j ACCEPT\n"));
    for n in &nets {
        out.push_str(&format!("-A {c} -d {n} -j ACCEPT\n"));
    }
    for port in &spec.exclude_ports {
        out.push_str(&format!("-A {c} -p tcp --dport {port} -j ACCEPT\n"));
    }
    out.push_str(&format!(
        "-A {c} -p tcp -j REJECT --reject-with tcp-reset\n"
    ));
    out.push_str(&format!(
        "-A {c} -p udp -j REJECT --reject-with {udp_reject}\n"
    ));
    out.push_str(&format!("-A {c} -j REJECT\n"));
    if jump_filter {
        out.push_str(&format!("-I OUTPUT 1 -j {c}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// Where `bin` is: on `path` (a `PATH`-style list), else in the sbin directories that an
/// ordinary user's `PATH` often lacks.
pub fn find_tool(path: &str, bin: &str) -> Option<std::path::PathBuf> {
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// The backend this machine has: `nft` first, else `iptables-restore`.
pub fn detect(path: &str) -> Option<Backend> {
    let has = |bin: &str| find_tool(path, bin).is_some();
    if has("nft") {
        Some(Backend::Nft)
    } else if [
        "iptables",
        "iptables-restore",
        "ip6tables",
        "ip6tables-restore",
    ]
    .iter()
    .all(|b| has(b))
    {
        Some(Backend::Iptables)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} missing: run UPDATE_GOLDEN=1 cargo test -p kz-netns",
                path.display()
            )
        });
        assert_eq!(
            actual, expected,
            "{name} changed; if intended, run UPDATE_GOLDEN=1 cargo test -p kz-netns"
        );
    }

    fn isolate() -> RuleSpec {
        RuleSpec {
            proxy_port: 15001,
            dns_port: 15053,
            exclude_uids: vec![],
            exclude_ports: vec![],
            exclude_cidrs: vec![],
        }
    }

    fn pod() -> RuleSpec {
        RuleSpec {
            proxy_port: 15001,
            dns_port: 15053,
            exclude_uids: vec![17337, 1001],
            exclude_ports: vec![15020],
            exclude_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
        }
    }

    #[test]
    fn golden_rulesets() {
        golden("isolate.nft", &nft_ruleset(&isolate()));
        golden("pod.nft", &nft_ruleset(&pod()));
        golden(
            "isolate.iptables",
            &iptables_restore(&isolate(), false, true, true),
        );
        golden(
            "isolate.ip6tables",
            &iptables_restore(&isolate(), true, true, true),
        );
        golden("pod.iptables", &iptables_restore(&pod(), false, true, true));
    }

    #[test]
    fn loopback_is_exempt_before_any_redirect() {
        let r = nft_ruleset(&isolate());
        let lo = r.find("ip daddr 127.0.0.0/8 return").unwrap();
        let redirect = r.find("meta l4proto tcp redirect").unwrap();
        assert!(lo < redirect);
        assert!(r.starts_with("table inet keyzero\ndelete table inet keyzero\n"));
    }

    #[test]
    fn networks_are_checked() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "192.0.2.7".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!("2001:db8::/32".parse::<Cidr>().unwrap().prefix, 32);
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "fd00::/129",
            "example.com/8",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn detection_prefers_nft() {
        let dir = std::env::temp_dir().join(format!("kz-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.to_str().unwrap().to_string();
        std::fs::write(dir.join("kz-test-tool"), "").unwrap();
        assert_eq!(
            find_tool(&p, "kz-test-tool"),
            Some(dir.join("kz-test-tool"))
        );
        assert_eq!(find_tool(&p, "kz-no-such-tool"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
