//! Command templates: argv elements with `{placeholder}`s filled from a job.

use serde_json::Value;

/// The values a command template can refer to.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    pub payload: &'a Value,
    pub job_id: i64,
    pub attempt: i32,
    pub kind: &'a str,
    pub queue: &'a str,
}

/// Why a command template could not be rendered. Every message names the
/// placeholder or field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown placeholder {{{placeholder}}} (known: {{payload}}, {{payload.FIELD}}, {{job_id}}, {{attempt}}, {{kind}}, {{queue}}; write {{{{ and }}}} for literal braces)"
    )]
    UnknownPlaceholder { placeholder: String },
    #[error("placeholder {{payload.{field}}}: the payload has no field {field:?}")]
    MissingField { field: String },
    #[error("placeholder {{payload.{field}}}: the payload is not a JSON object")]
    PayloadNotObject { field: String },
    #[error(
        "placeholder {{payload.{field}}}: field {field:?} is {found}, only strings, numbers and booleans can be substituted (use {{payload}} for JSON)"
    )]
    NotScalar { field: String, found: &'static str },
    #[error("unclosed '{{' in command argument {element:?} (write {{{{ for a literal brace)")]
    UnclosedBrace { element: String },
    #[error("unmatched '}}' in command argument {element:?} (write }}}} for a literal brace)")]
    UnmatchedBrace { element: String },
    #[error("the command template is empty")]
    Empty,
}

/// Renders a command template into argv.
///
/// Each element may contain:
/// - `{payload.FIELD}`: a top-level field of the JSON payload; a string is
///   substituted as its plain text, a number or boolean as its JSON text.
///   A missing field is an error, and so is `null`, an array or an object.
/// - `{payload}`: the whole payload as compact JSON.
/// - `{job_id}`, `{attempt}`, `{kind}`, `{queue}`.
/// - `{{` and `}}` for literal `{` and `}`.
///
/// Anything else in braces is an error naming it. Substituted text is never
/// re-scanned for placeholders, and each element stays one argv element
/// whatever it contains (no shell splitting).
pub fn render_template(
    template: &[String],
    vars: &TemplateVars<'_>,
) -> Result<Vec<String>, TemplateError> {
    if template.is_empty() {
        return Err(TemplateError::Empty);
    }
    template.iter().map(|el| render_one(el, vars)).collect()
}

fn render_one(element: &str, vars: &TemplateVars<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(element.len());
    let mut rest = element;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if rest.as_bytes()[i] == b'}' {
            if let Some(tail) = after.strip_prefix('}') {
                out.push('}');
                rest = tail;
                continue;
            }
            return Err(TemplateError::UnmatchedBrace {
                element: element.to_owned(),
            });
        }
        if let Some(tail) = after.strip_prefix('{') {
            out.push('{');
            rest = tail;
            continue;
        }
        let Some(end) = after.find('}') else {
            return Err(TemplateError::UnclosedBrace {
                element: element.to_owned(),
            });
        };
        let name = &after[..end];
        if name.contains('{') {
            return Err(TemplateError::UnclosedBrace {
                element: element.to_owned(),
            });
        }
        out.push_str(&lookup(name, vars)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(name: &str, vars: &TemplateVars<'_>) -> Result<String, TemplateError> {
    match name {
        "payload" => Ok(vars.payload.to_string()),
        "job_id" => Ok(vars.job_id.to_string()),
        "attempt" => Ok(vars.attempt.to_string()),
        "kind" => Ok(vars.kind.to_owned()),
        "queue" => Ok(vars.queue.to_owned()),
        _ => {
            let Some(field) = name.strip_prefix("payload.").filter(|f| !f.is_empty()) else {
                return Err(TemplateError::UnknownPlaceholder {
                    placeholder: name.to_owned(),
                });
            };
            let Value::Object(obj) = vars.payload else {
                return Err(TemplateError::PayloadNotObject {
                    field: field.to_owned(),
                });
            };
            let missing = || TemplateError::MissingField {
                field: field.to_owned(),
            };
            match obj.get(field).ok_or_else(missing)? {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                other => Err(TemplateError::NotScalar {
                    field: field.to_owned(),
                    found: match other {
                        Value::Null => "null",
                        Value::Array(_) => "an array",
                        _ => "an object",
                    },
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &[&str], payload: &Value) -> Result<Vec<String>, TemplateError> {
        let template: Vec<String> = template.iter().map(|s| s.to_string()).collect();
        render_template(
            &template,
            &TemplateVars {
                payload,
                job_id: 42,
                attempt: 3,
                kind: "agent.run",
                queue: "default",
            },
        )
    }

    #[test]
    fn fields_are_plain_text() {
        let p = json!({"repo": "acme/app", "n": 7, "f": 1.5, "dry": false, "text": "a b {c}"});
        assert_eq!(
            render(
                &[
                    "agent",
                    "--repo={payload.repo}",
                    "{payload.n}",
                    "{payload.f}",
                    "{payload.dry}",
                    "{payload.text}"
                ],
                &p
            )
            .unwrap(),
            ["agent", "--repo=acme/app", "7", "1.5", "false", "a b {c}"]
        );
    }

    #[test]
    fn whole_payload_is_compact_json() {
        let p = json!({"a": [1, 2], "b": "x"});
        assert_eq!(
            render(&["run", "{payload}"], &p).unwrap(),
            ["run", r#"{"a":[1,2],"b":"x"}"#]
        );
    }

    #[test]
    fn job_vars() {
        let p = json!({});
        assert_eq!(
            render(&["{kind}/{queue}", "job-{job_id}-try-{attempt}"], &p).unwrap(),
            ["agent.run/default", "job-42-try-3"]
        );
    }

    #[test]
    fn escaping() {
        let p = json!({"x": 1});
        assert_eq!(
            render(&["{{payload.x}}", "{{{payload.x}}}", "a}}b{{"], &p).unwrap(),
            ["{payload.x}", "{1}", "a}b{"]
        );
    }

    #[test]
    fn missing_field_names_it() {
        let err = render(&["{payload.branch}"], &json!({"repo": "r"})).unwrap_err();
        assert_eq!(
            err,
            TemplateError::MissingField {
                field: "branch".into()
            }
        );
        assert!(err.to_string().contains("branch"), "{err}");
        let err = render(&["{payload.x}"], &json!([1])).unwrap_err();
        assert!(matches!(err, TemplateError::PayloadNotObject { .. }));
        assert!(err.to_string().contains("payload.x"), "{err}");
        let err = render(&["{payload.x}"], &json!({"x": {"y": 1}})).unwrap_err();
        assert!(matches!(err, TemplateError::NotScalar { .. }));
        assert!(err.to_string().contains("payload.x"), "{err}");
        let err = render(&["{payload.x}"], &json!({"x": null})).unwrap_err();
        assert!(err.to_string().contains("null"), "{err}");
    }

    #[test]
    fn unknown_placeholder_names_it() {
        for (el, name) in [
            ("{job}", "job"),
            ("x{payload.}y", "payload."),
            ("{ kind }", " kind "),
            ("{}", ""),
        ] {
            let err = render(&[el], &json!({})).unwrap_err();
            assert_eq!(
                err,
                TemplateError::UnknownPlaceholder {
                    placeholder: name.into()
                },
                "{el}"
            );
            assert!(err.to_string().contains(&format!("{{{name}}}")), "{err}");
        }
    }

    #[test]
    fn unbalanced_braces() {
        assert!(matches!(
            render(&["{payload"], &json!({})),
            Err(TemplateError::UnclosedBrace { .. })
        ));
        assert!(matches!(
            render(&["{a{b}"], &json!({})),
            Err(TemplateError::UnclosedBrace { .. })
        ));
        assert!(matches!(
            render(&["a}b"], &json!({})),
            Err(TemplateError::UnmatchedBrace { .. })
        ));
        assert_eq!(render(&[], &json!({})), Err(TemplateError::Empty));
    }
}
