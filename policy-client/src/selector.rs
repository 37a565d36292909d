//! Kubernetes label selectors (`matchLabels` + `matchExpressions`) as our
//! policy resources spell them, their validation, and matching.
//!
//! Owns: the [`Selector`] type, its rules (In/NotIn need values,
//! Exists/DoesNotExist must have none) and Kubernetes matching semantics:
//! every requirement is ANDed and an empty selector selects everything.
//! Must not: know about pods or servers; callers pass label maps.
//! Called by: `resources` (serde), `validate` (rules), `compile` and `check`.
//!
//! We use our own type rather than k8s-openapi's `LabelSelector` because the
//! latter ignores unknown fields: a typo such as `matchLabel` would silently
//! become the empty selector and select every pod. Ours denies unknown fields.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A label selector. Requirements from `matchLabels` and `matchExpressions`
/// are ANDed; a selector with neither selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<Requirement>>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

/// The operators Kubernetes defines for label selectors.
pub const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// A selector rule that does not hold: `field` is relative to the selector
/// (e.g. `matchExpressions[1].values`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

impl Selector {
    /// A selector that matches exactly these labels.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Selector {
            match_labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        }
    }

    /// Converts a k8s-openapi selector (e.g. a Deployment's `spec.selector`).
    pub fn from_k8s(
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Selector {
        Selector {
            match_labels: sel.match_labels.clone(),
            match_expressions: sel.match_expressions.as_ref().map(|exprs| {
                exprs
                    .iter()
                    .map(|e| Requirement {
                        key: e.key.clone(),
                        operator: e.operator.clone(),
                        values: e.values.clone(),
                    })
                    .collect()
            }),
        }
    }

    /// Every rule violation, with the field relative to the selector.
    pub fn validate(&self) -> Vec<SelectorError> {
        let mut errors = Vec::new();
        for (key, value) in self.match_labels.iter().flatten() {
            let field = format!("matchLabels.{key}");
            if let Err(message) = validate_label_key(key) {
                errors.push(SelectorError {
                    field: field.clone(),
                    message,
                });
            }
            if let Err(message) = validate_label_value(value) {
                errors.push(SelectorError { field, message });
            }
        }
        for (i, req) in self.match_expressions.iter().flatten().enumerate() {
            let at = |f: &str| format!("matchExpressions[{i}]{f}");
            if let Err(message) = validate_label_key(&req.key) {
                errors.push(SelectorError {
                    field: at(".key"),
                    message,
                });
            }
            let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
            match req.operator.as_str() {
                "In" | "NotIn" if !has_values => errors.push(SelectorError {
                    field: at(".values"),
                    message: format!("operator {} needs at least one value", req.operator),
                }),
                "Exists" | "DoesNotExist" if has_values => errors.push(SelectorError {
                    field: at(".values"),
                    message: format!("operator {} must not have values", req.operator),
                }),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => errors.push(SelectorError {
                    field: at(".operator"),
                    message: format!(
                        "unknown operator {other:?}{}; expected one of {}",
                        did_you_mean(other, OPERATORS.iter().copied()),
                        OPERATORS.join(", ")
                    ),
                }),
            }
            for (j, value) in req.values.iter().flatten().enumerate() {
                if let Err(message) = validate_label_value(value) {
                    errors.push(SelectorError {
                        field: at(&format!(".values[{j}]")),
                        message,
                    });
                }
            }
        }
        errors
    }

    /// Whether `labels` satisfy every requirement (Kubernetes semantics).
    /// An invalid requirement (unknown operator) matches nothing, so a
    /// selector that slipped past validation can never widen a selection.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let labels_ok = self
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        labels_ok
            && self
                .match_expressions
                .iter()
                .flatten()
                .all(|req| req.matches(labels))
    }

    /// True when the selector has no requirement at all (selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && self.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let values = self.values.as_deref().unwrap_or_default();
        match self.operator.as_str() {
            "In" => labels.get(&self.key).is_some_and(|v| values.contains(v)),
            // Kubernetes: NotIn also matches when the label is absent.
            "NotIn" => labels.get(&self.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&self.key),
            "DoesNotExist" => !labels.contains_key(&self.key),
            _ => false,
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters (alphanumerics, `-`, `_`, `.`, alphanumeric at both ends).
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if !is_dns_subdomain(prefix) {
            return Err(format!(
                "label key {key:?}: prefix {prefix:?} is not a DNS subdomain"
            ));
        }
    }
    if !is_label_name(name) {
        return Err(format!(
            "label key {key:?}: name must be 1-63 characters of [A-Za-z0-9_.-], alphanumeric at both ends"
        ));
    }
    Ok(())
}

/// A label value: empty, or like a label key's name part.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} must be at most 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends"
        ))
    }
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// RFC 1123 subdomain: dot-separated lower-case labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// RFC 1123 label: 1-63 lower-case alphanumerics or `-`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// ` (did you mean "X"?)` for the closest candidate, or nothing when none is close.
pub fn did_you_mean<'a>(got: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let best = candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&got.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, c)) => format!(" (did you mean {c:?}?)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(yaml: &str) -> Selector {
        serde_yaml_ng::from_str(yaml).expect("selector yaml")
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let voting_prod = labels(&[("app", "voting-svc"), ("environment", "prod")]);
        let emoji = labels(&[("app", "emoji-svc")]);
        let emoji_dev = labels(&[("app", "emoji-svc"), ("environment", "dev")]);
        let web = labels(&[("app", "web-svc")]);
        let backend = sel(r#"
matchExpressions:
  - {key: app, operator: In, values: [voting-svc, emoji-svc]}
  - {key: environment, operator: NotIn, values: [dev]}
"#);
        let cases: &[(&str, &Selector, &BTreeMap<String, String>, bool)] = &[
            ("In and NotIn with label present", &backend, &voting_prod, true),
            ("NotIn matches an absent label", &backend, &emoji, true),
            ("NotIn excludes a listed value", &backend, &emoji_dev, false),
            ("In excludes other values", &backend, &web, false),
            ("empty selector selects all", &Selector::default(), &web, true),
            ("empty selector selects unlabelled", &Selector::default(), &labels(&[]), true),
            ("matchLabels equal", &sel("matchLabels: {app: web-svc}"), &web, true),
            ("matchLabels differ", &sel("matchLabels: {app: web-svc}"), &emoji, false),
            ("matchLabels missing", &sel("matchLabels: {app: web-svc}"), &labels(&[]), false),
            ("Exists present", &sel("matchExpressions: [{key: environment, operator: Exists}]"), &voting_prod, true),
            ("Exists absent", &sel("matchExpressions: [{key: environment, operator: Exists}]"), &emoji, false),
            ("DoesNotExist absent", &sel("matchExpressions: [{key: environment, operator: DoesNotExist}]"), &emoji, true),
            ("DoesNotExist present", &sel("matchExpressions: [{key: environment, operator: DoesNotExist}]"), &emoji_dev, false),
            ("labels and expressions are ANDed", &sel("matchLabels: {app: emoji-svc}\nmatchExpressions: [{key: environment, operator: Exists}]"), &emoji, false),
            ("unknown operator matches nothing", &sel("matchExpressions: [{key: app, operator: Equals, values: [x]}]"), &emoji, false),
        ];
        for (name, selector, labels, want) in cases {
            assert_eq!(selector.matches(labels), *want, "{name}");
        }
    }

    #[test]
    fn validation_rules() {
        let cases: &[(&str, &[&str])] = &[
            ("{}", &[]),
            ("matchLabels: {app: web}", &[]),
            ("matchLabels: {app.kubernetes.io/name: web, x: ''}", &[]),
            (
                "matchExpressions: [{key: a, operator: In}]",
                &["matchExpressions[0].values"],
            ),
            (
                "matchExpressions: [{key: a, operator: NotIn, values: []}]",
                &["matchExpressions[0].values"],
            ),
            (
                "matchExpressions: [{key: a, operator: Exists, values: [x]}]",
                &["matchExpressions[0].values"],
            ),
            ("matchExpressions: [{key: a, operator: DoesNotExist}]", &[]),
            (
                "matchExpressions: [{key: a, operator: in, values: [x]}]",
                &["matchExpressions[0].operator"],
            ),
            (
                "matchExpressions: [{key: '', operator: Exists}]",
                &["matchExpressions[0].key"],
            ),
            ("matchLabels: {'bad key!': x}", &["matchLabels.bad key!"]),
            ("matchLabels: {app: 'not ok'}", &["matchLabels.app"]),
        ];
        for (yaml, want) in cases {
            let got: Vec<String> = sel(yaml).validate().into_iter().map(|e| e.field).collect();
            assert_eq!(&got, want, "{yaml}");
        }
        let err = &sel("matchExpressions: [{key: a, operator: Notin, values: [x]}]").validate()[0];
        assert!(
            err.message.contains("did you mean \"NotIn\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_yaml_ng::from_str::<Selector>("matchLabel: {app: web}").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `matchLabel`"),
            "{err}"
        );
    }
}
