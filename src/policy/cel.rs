//! CEL rules: compiled once when a bundle loads, checked to reference only `identity`, `secret`
//! and `request`, bounded in size and nesting, and evaluated to a boolean (anything else, or an
//! evaluation error, is an error — which denies when the rule is a `deny`).
//!
//! `&&`, `||`, `!` and `?:` are evaluated here, the way the CEL spec defines them: the logical
//! operators are commutative over errors, so `false && error` and `error && false` are `false`,
//! `true || error` and `error || true` are `true`, and an error remains only when the other side
//! cannot decide. Everything else is evaluated by `cel-interpreter`.

use cel_interpreter::{Context, IdedExpr, Program, Value};
use cel_parser::ast::Expr;

pub const MAX_RULE_LEN: usize = 4096;
pub const MAX_NESTING: usize = 32;
pub const VARIABLES: [&str; 3] = ["identity", "secret", "request"];

/// A compiled rule condition.
pub struct Condition {
    expr: IdedExpr,
    pub source: String,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .finish()
    }
}

/// Names bound by comprehension macros (`list.exists(x, ...)` and friends); the parser reports
/// them as variables, but they are local to the macro.
fn macro_variables(src: &str) -> Vec<String> {
    const MACROS: [&str; 5] = ["exists", "all", "exists_one", "map", "filter"];
    let mut out = Vec::new();
    for m in MACROS {
        let pat = format!(".{m}(");
        let mut rest = src;
        while let Some(i) = rest.find(&pat) {
            rest = &rest[i + pat.len()..];
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let after = rest.trim_start()[name.len()..].trim_start();
            if !name.is_empty() && after.starts_with(',') {
                out.push(name);
            }
        }
    }
    out
}

fn nesting(src: &str) -> usize {
    let (mut depth, mut max, mut quote) = (0usize, 0usize, None::<char>);
    let mut escaped = false;
    for c in src.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

const UNPARSED: &str = "the expression could not be parsed";

/// Why a rule does not compile, or did not evaluate to a boolean.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CelError {
    #[error("rule longer than {MAX_RULE_LEN} bytes")]
    TooLong,
    #[error("rule nested deeper than {MAX_NESTING} levels")]
    TooDeep,
    #[error("invalid cel: {0}")]
    Syntax(String),
    #[error("rule references {0} (only identity, secret and request are available)")]
    Unknown(String),
    #[error("rule evaluated to {0} instead of a boolean")]
    NotBoolean(&'static str),
    #[error("{0}")]
    Eval(String),
    #[error("{0}: {1}")]
    Variable(&'static str, String),
}

impl Condition {
    pub fn compile(src: &str) -> Result<Condition, CelError> {
        if src.len() > MAX_RULE_LEN {
            return Err(CelError::TooLong);
        }
        if nesting(src) > MAX_NESTING {
            return Err(CelError::TooDeep);
        }
        // The parser panics on some malformed input instead of returning an error: catch it,
        // with the panic message silenced (this runs only while a bundle loads).
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let compiled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Program::compile(src)));
        std::panic::set_hook(previous);
        let program: Program = match compiled {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(CelError::Syntax(
                    e.to_string()
                        .lines()
                        .next()
                        .unwrap_or("parse error")
                        .to_lowercase(),
                ))
            }
            Err(_) => return Err(CelError::Syntax(UNPARSED.into())),
        };
        let bound = macro_variables(src);
        let mut unknown: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .filter(|v| !VARIABLES.contains(v) && !bound.iter().any(|b| b == v))
            .map(String::from)
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(CelError::Unknown(unknown.join(", ")));
        }
        let expr = cel_parser::Parser::default()
            .parse(src)
            .map_err(|_| CelError::Syntax(UNPARSED.into()))?;
        Ok(Condition {
            expr,
            source: src.to_string(),
        })
    }

    /// Evaluates with the given variables (JSON objects).
    pub fn eval(
        &self,
        identity: &serde_json::Value,
        secret: &serde_json::Value,
        request: &serde_json::Value,
    ) -> Result<bool, CelError> {
        self.eval_in(&variables(identity, secret, request)?)
    }

    /// Evaluates in a context built once with `variables` (one per decision, shared by rules).
    pub fn eval_in(&self, ctx: &Context<'_>) -> Result<bool, CelError> {
        boolean(&self.expr, ctx)
    }
}

/// Evaluates `e` to a boolean, applying CEL's error-absorbing logical operators.
fn boolean(e: &IdedExpr, ctx: &Context<'_>) -> Result<bool, CelError> {
    if let Expr::Call(c) = &e.expr {
        if c.target.is_none() {
            match (c.func_name.as_str(), c.args.as_slice()) {
                ("_&&_", [a, b]) => return logical(a, b, false, ctx),
                ("_||_", [a, b]) => return logical(a, b, true, ctx),
                ("!_", [a]) => return boolean(a, ctx).map(|v| !v),
                ("_?_:_", [cond, yes, no]) => {
                    return if boolean(cond, ctx)? {
                        boolean(yes, ctx)
                    } else {
                        boolean(no, ctx)
                    }
                }
                _ => {}
            }
        }
    }
    match Value::resolve(e, ctx) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(CelError::NotBoolean(type_name(&other))),
        Err(err) => Err(CelError::Eval(err.to_string().to_lowercase())),
    }
}

/// `a && b` (`decisive` false) or `a || b` (`decisive` true): either side equal to `decisive`
/// decides, whatever the other is (even an error).
fn logical(
    a: &IdedExpr,
    b: &IdedExpr,
    decisive: bool,
    ctx: &Context<'_>,
) -> Result<bool, CelError> {
    let left = boolean(a, ctx);
    if left == Ok(decisive) {
        return Ok(decisive);
    }
    match (left, boolean(b, ctx)) {
        (_, Ok(v)) if v == decisive => Ok(decisive),
        (Ok(_), Ok(_)) => Ok(!decisive),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// CEL's built-in functions, registered once: a decision's variables go in a scope on top.
fn builtins() -> &'static Context<'static> {
    static BASE: std::sync::OnceLock<Context<'static>> = std::sync::OnceLock::new();
    BASE.get_or_init(Context::default)
}

/// The evaluation context: `identity`, `secret` and `request`.
pub fn variables(
    identity: &(impl serde::Serialize + ?Sized),
    secret: &serde_json::Value,
    request: &serde_json::Value,
) -> Result<Context<'static>, CelError> {
    let convert = |name: &'static str, v: &serde_json::Value| {
        cel_interpreter::to_value(v).map_err(|e| CelError::Variable(name, e.to_string()))
    };
    scope(
        identity,
        convert("secret", secret)?,
        convert("request", request)?,
    )
}

/// As `variables`, with `secret` and `request` already CEL values (see `string_map`).
pub fn scope(
    identity: &(impl serde::Serialize + ?Sized),
    secret: Value,
    request: Value,
) -> Result<Context<'static>, CelError> {
    let mut ctx = builtins().new_inner_scope();
    let identity = cel_interpreter::to_value(identity)
        .map_err(|e| CelError::Variable("identity", e.to_string()))?;
    ctx.add_variable_from_value("identity", identity);
    ctx.add_variable_from_value("secret", secret);
    ctx.add_variable_from_value("request", request);
    Ok(ctx)
}

/// A CEL map of strings.
pub fn string_map<const N: usize>(pairs: [(&str, String); N]) -> Value {
    let map: std::collections::HashMap<String, Value> = pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect();
    Value::from(map)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Int(_) | Value::UInt(_) | Value::Float(_) => "a number",
        Value::String(_) => "a string",
        Value::Null => "null",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        _ => "a non-boolean value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compile_checks_and_evaluation() {
        let c = Condition::compile("identity.service == 'data-pipeline-agent'").unwrap();
        let id = json!({"service": "data-pipeline-agent"});
        assert_eq!(c.eval(&id, &json!({}), &json!({})), Ok(true));
        assert_eq!(
            c.eval(&json!({"service": "x"}), &json!({}), &json!({})),
            Ok(false)
        );
        assert!(
            c.eval(&json!({}), &json!({}), &json!({})).is_err(),
            "a missing claim is an error"
        );
        let e = Condition::compile("env.HOME == 'x'").unwrap_err();
        assert_eq!(e, CelError::Unknown("env".into()), "{e}");
        assert!(Condition::compile("identity.service ==").is_err());
        assert!(
            Condition::compile(&format!("{}true{}", "(".repeat(40), ")".repeat(40))).unwrap_err()
                == CelError::TooDeep
        );
        assert!(Condition::compile(&"a".repeat(5000)).unwrap_err() == CelError::TooLong);
        let n = Condition::compile("identity.exp").unwrap();
        assert!(
            n.eval(&json!({"exp": 5}), &json!({}), &json!({}))
                .unwrap_err()
                == CelError::NotBoolean("a number")
        );
        let s = Condition::compile(
            "secret.ref.startsWith('secret/data/prod/') && request.action == 'resolve'",
        )
        .unwrap();
        assert_eq!(
            s.eval(
                &json!({}),
                &json!({"ref": "secret/data/prod/db"}),
                &json!({"action": "resolve"})
            ),
            Ok(true)
        );
    }

    #[test]
    fn logical_operators_absorb_errors_as_the_cel_spec_says() {
        let id = json!({"service": "x"});
        let eval = |src: &str| {
            Condition::compile(src)
                .unwrap()
                .eval(&id, &json!({}), &json!({}))
        };
        // `identity.missing` is an error (no such key).
        assert_eq!(
            eval("identity.missing == 1 || identity.service == 'x'"),
            Ok(true)
        );
        assert_eq!(
            eval("identity.service == 'x' || identity.missing == 1"),
            Ok(true)
        );
        assert_eq!(
            eval("identity.missing == 1 && identity.service == 'y'"),
            Ok(false)
        );
        assert_eq!(
            eval("identity.service == 'y' && identity.missing == 1"),
            Ok(false)
        );
        assert!(eval("identity.missing == 1 || identity.service == 'y'").is_err());
        assert!(eval("identity.service == 'x' && identity.missing == 1").is_err());
        assert_eq!(eval("!(identity.missing == 1 && false)"), Ok(true));
        assert_eq!(
            eval("identity.service == 'x' ? (identity.missing == 1 || true) : false"),
            Ok(true)
        );
        assert!(
            eval("1 || true").is_ok(),
            "a non-boolean side is an error the other absorbs"
        );
        assert!(eval("1 && true").is_err());
        assert_eq!(
            eval("identity.groups.exists(g, g == 'a') || identity.service == 'x'"),
            Ok(true)
        );
    }

    #[test]
    fn macros_with_their_own_variables() {
        let c = Condition::compile("identity.groups.exists(g, g == 'admins')");
        match c {
            Ok(c) => assert_eq!(
                c.eval(&json!({"groups": ["a", "admins"]}), &json!({}), &json!({})),
                Ok(true)
            ),
            Err(e) => panic!("comprehension variables must be allowed: {e}"),
        }
    }
}
