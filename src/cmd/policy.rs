//! `kz policy check|test|eval`: the bundle checked, tested and evaluated offline.

use serde_json::{json, Value};

use super::{lines, now, process_env, runtime, CommandResult, Failure, EXIT_FAIL};
use crate::cli::PolicyCommand;
use crate::config::{bundle, ProviderKind};
use crate::server::engine::{Engine, Subject};

pub fn policy(cmd: PolicyCommand) -> CommandResult {
    match cmd {
        PolicyCommand::Check { bundle } => {
            let b = bundle::load(&bundle).map_err(|e| Failure::many(EXIT_FAIL, lines(e)))?;
            let rules: usize = b.policies.iter().map(|p| p.rules.len()).sum();
            println!(
                "{}: ok (revision {}, {} issuers, {} secrets, {} policies, {rules} rules)",
                bundle.display(),
                b.revision,
                b.issuers.len(),
                b.config.secrets.len(),
                b.policies.len()
            );
            Ok(0)
        }
        PolicyCommand::Test { bundle, cases } => {
            let b = bundle::load(&bundle).map_err(|e| Failure::many(EXIT_FAIL, lines(e)))?;
            let text = std::fs::read_to_string(&cases)
                .map_err(|e| Failure::new(EXIT_FAIL, format!("{}: {e}", cases.display())))?;
            let doc: Value = serde_yaml::from_str(&text).map_err(|e| {
                Failure::new(EXIT_FAIL, format!("{}: invalid yaml: {e}", cases.display()))
            })?;
            let list = doc
                .get("cases")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if list.is_empty() {
                return Err(Failure::new(
                    EXIT_FAIL,
                    format!("{}: no cases (expected a cases: list)", cases.display()),
                ));
            }
            let engine = Engine::offline(b, process_env());
            let rt = runtime()?;
            let (mut passed, mut failed) = (0, 0);
            for (i, c) in list.iter().enumerate() {
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| format!("case {}", i + 1));
                let claims = c
                    .get("claims")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let r = c.get("ref").and_then(Value::as_str).unwrap_or("");
                let provider = c
                    .get("provider")
                    .and_then(Value::as_str)
                    .and_then(ProviderKind::parse);
                let expect = c.get("expect").and_then(Value::as_str).unwrap_or("");
                if expect != "allow" && expect != "deny" {
                    println!("FAIL  {name}: expect must be allow or deny");
                    failed += 1;
                    continue;
                }
                let d = match rt.block_on(engine.explain_ref(provider, r)) {
                    Ok(target) => {
                        let shown = target.display();
                        let mut subject = Subject::of(&target, &shown, None, "resolve");
                        subject.provider = provider;
                        engine.decide(&claims, &subject)
                    }
                    Err(_) => engine.decide(&claims, &Subject::refused(r, provider, "resolve")),
                };
                let got = if d.allowed { "allow" } else { "deny" };
                if got == expect {
                    println!("ok    {name}");
                    passed += 1;
                } else {
                    println!(
                        "FAIL  {name}: expected {expect}, got {got} (matched: {})",
                        d.matched.join(", ")
                    );
                    failed += 1;
                }
            }
            println!("{passed} passed, {failed} failed");
            Ok(if failed > 0 { EXIT_FAIL } else { 0 })
        }
        PolicyCommand::Eval {
            bundle,
            token,
            reference,
            provider,
        } => {
            let b = bundle::load(&bundle).map_err(|e| Failure::many(EXIT_FAIL, lines(e)))?;
            let rt = runtime()?;
            let engine = rt
                .block_on(Engine::load(b, process_env()))
                .map_err(|e| Failure::many(EXIT_FAIL, e))?;
            let claims = rt
                .block_on(engine.verify(&token, now()))
                .map_err(|e| Failure::new(EXIT_FAIL, format!("token: {e}")))?;
            let provider = provider.as_deref().and_then(ProviderKind::parse);
            let target = rt.block_on(engine.explain_ref(provider, &reference));
            let shown = target.as_ref().map(|t| t.display()).unwrap_or_default();
            let subject = match &target {
                Ok(t) => {
                    let mut s = Subject::of(t, &shown, None, "decide");
                    s.provider = provider;
                    s
                }
                Err(_) => Subject::refused(&reference, provider, "decide"),
            };
            let d = engine.decide(&claims, &subject);
            let outcomes = subject
                .paths
                .iter()
                .map(|p| engine.outcomes(&claims, &subject, p))
                .collect::<Option<Vec<_>>>()
                .filter(|o| !o.is_empty())
                .map(|o| o.concat());
            let rules: Vec<Value> = match outcomes {
                None => vec![json!({"reason": match &target {
                    Err(e) => format!("the ref is not canonical ({e}): denied"),
                    Ok(_) => "the ref is not canonical (.., empty or encoded segments): denied".into(),
                }})],
                Some(o) => o
                    .iter()
                    .map(|o| {
                        let result = match &o.result {
                            Ok(b) => json!(b),
                            Err(e) => json!({ "error": e.to_string() }),
                        };
                        json!({"rule": o.rule, "effect": o.effect.name(), "result": result})
                    })
                    .collect(),
            };
            let out = json!({
                "decision": if d.allowed { "allow" } else { "deny" },
                "bundle_revision": engine.bundle.revision,
                "matched": d.matched,
                "rules": rules,
                "identity": claims,
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("json"));
            Ok(0)
        }
    }
}
