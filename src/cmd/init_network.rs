//! `kz init-network`: a pod's redirect rules in the current network namespace.

use super::{CommandResult, Failure};

/// `kz init-network`: the pod's redirect rules, applied (or printed with `--dry-run`).
pub fn init_network(a: crate::cli::InitNetworkArgs) -> CommandResult {
    use kz_netns::rules::{detect, iptables_restore, nft_ruleset, Backend, RuleSpec};
    let mut uids = vec![a.kz_uid];
    uids.extend(a.exclude_uids.iter().copied().filter(|u| *u != a.kz_uid));
    let spec = RuleSpec {
        proxy_port: a.proxy_port,
        dns_port: a.dns_port,
        exclude_uids: uids,
        exclude_ports: a.exclude_ports,
        exclude_cidrs: a.exclude_cidrs,
    };
    let path = std::env::var("PATH").unwrap_or_default();
    let backend =
        match a.backend.as_str() {
            "nft" => Backend::Nft,
            "iptables" => Backend::Iptables,
            _ => match detect(&path) {
                Some(b) => b,
                None if a.dry_run => Backend::Nft,
                None => return Err(Failure::new(
                    1,
                    "init-network: needs nft (nftables) or iptables, iptables-restore, ip6tables and ip6tables-restore",
                )),
            },
        };
    if a.dry_run {
        match backend {
            Backend::Nft => print!("# nft -f -\n{}", nft_ruleset(&spec)),
            Backend::Iptables => print!(
                "# iptables-restore --noflush (jumps from OUTPUT added when missing)\n{}# ip6tables-restore --noflush\n{}",
                iptables_restore(&spec, false, true, true),
                iptables_restore(&spec, true, true, true)
            ),
        }
        return Ok(0);
    }
    apply_rules(&spec, backend)?;
    eprintln!(
        "kz: redirect rules applied ({}); tcp -> :{}, dns -> :{}, uids left alone: {:?}",
        if backend == Backend::Nft {
            "nftables"
        } else {
            "iptables"
        },
        spec.proxy_port,
        spec.dns_port,
        spec.exclude_uids
    );
    Ok(0)
}

#[cfg(target_os = "linux")]
fn apply_rules(
    spec: &kz_netns::rules::RuleSpec,
    backend: kz_netns::rules::Backend,
) -> Result<(), Failure> {
    kz_netns::sandbox::apply_rules(spec, backend)
        .map_err(|e| Failure::new(crate::exit::EXIT_FAIL, format!("init-network: {e}")))
}

#[cfg(not(target_os = "linux"))]
fn apply_rules(_: &kz_netns::rules::RuleSpec, _: kz_netns::rules::Backend) -> Result<(), Failure> {
    Err(Failure::new(
        1,
        kz_netns::NetnsError::Unsupported.to_string(),
    ))
}
