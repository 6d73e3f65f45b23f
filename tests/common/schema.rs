//! The `--json` documents against docs/json.md: the tables there are parsed, and each
//! documented field must be present with its documented type; a report field that the
//! document does not list is an error (except where a section says further fields may
//! appear).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// One section of docs/json.md: field path -> type, and whether other fields may appear.
struct Shape {
    fields: BTreeMap<String, String>,
    open: bool,
}

/// The sections of docs/json.md by heading (the last word of `##`/`###` headings).
fn shapes() -> BTreeMap<String, Shape> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/json.md"))
        .expect("docs/json.md");
    let mut out: BTreeMap<String, Shape> = BTreeMap::new();
    let mut cur: Option<String> = None;
    let mut open = false;
    for line in doc.lines() {
        if let Some(h) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            cur = Some(h.split_whitespace().last().unwrap_or("").to_string());
            continue;
        }
        if line.contains("Further fields may appear") {
            open = true;
        }
        let Some(name) = &cur else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| field | type | meaning |` rows only (a two-column table names, it does not shape).
        if cells.len() < 5 || !cells[1].starts_with('`') || cells[2].is_empty() {
            continue;
        }
        let field = cells[1].trim_matches('`').to_string();
        if field.contains(',') || field.contains(' ') {
            continue; // the table of names, not a report's shape
        }
        let shape = out.entry(name.clone()).or_insert(Shape {
            fields: BTreeMap::new(),
            open,
        });
        shape.open |= open;
        shape.fields.insert(field, cells[2].to_string());
    }
    out
}

fn type_ok(v: &Value, ty: &str) -> bool {
    let (ty, nullable) = match ty.strip_suffix('?') {
        Some(t) => (t, true),
        None => (ty, false),
    };
    if v.is_null() {
        return nullable;
    }
    match ty {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("docs/json.md: unknown type {other}"),
    }
}

/// The values at `path` (`a[].b`: field `b` of each element of `a`), with the path to each.
fn values<'v>(v: &'v Value, path: &str) -> Vec<(&'v Value, bool)> {
    let mut cur: Vec<&Value> = vec![v];
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, each) = match part.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (*part, false),
        };
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for c in cur {
            let Some(x) = c.get(key) else {
                if last {
                    return vec![(&Value::Null, false)];
                }
                panic!("missing `{key}` of `{path}` in {c}");
            };
            if each && !last {
                next.extend(x.as_array().expect("an array").iter());
            } else {
                next.push(x);
            }
        }
        cur = next;
    }
    cur.into_iter().map(|v| (v, true)).collect()
}

/// Checks `doc` against the envelope and section `section` of docs/json.md; panics with
/// the first difference.
pub fn check(doc: &Value, command: &str, section: &str) {
    let shapes = shapes();
    let shape = shapes
        .get(section)
        .unwrap_or_else(|| panic!("docs/json.md has no section {section}"));
    assert_eq!(doc["schema"], "rbddiff/1", "{doc}");
    assert_eq!(doc["command"], command, "{doc}");
    // Every documented field, with its type (optional fields: `record_list` and `covered`,
    // with `--records` only, and `image`).
    for (path, ty) in &shape.fields {
        for (v, present) in values(doc, path) {
            let optional = path.ends_with("record_list")
                || path.ends_with("].covered")
                || path.ends_with("].image");
            if !present {
                assert!(optional, "{command}: `{path}` missing in {doc}");
                continue;
            }
            assert!(type_ok(v, ty), "{command}: `{path}` is not {ty}: {v}");
        }
    }
    // No undocumented field, at every documented object level.
    if shape.open {
        return;
    }
    let mut levels: Vec<String> = vec![String::new()];
    levels.extend(shape.fields.keys().cloned());
    for level in levels {
        let children: Vec<&str> = shape
            .fields
            .keys()
            .filter_map(|k| {
                let rest = if level.is_empty() {
                    Some(k.as_str())
                } else {
                    k.strip_prefix(&format!("{level}."))
                        .or_else(|| k.strip_prefix(&format!("{level}[].")))
                };
                rest.filter(|r| !r.contains('.'))
            })
            .map(|r| r.trim_end_matches("[]"))
            .collect();
        if children.is_empty() {
            continue;
        }
        let objects: Vec<&Value> = if level.is_empty() {
            vec![doc]
        } else {
            values(doc, &level)
                .into_iter()
                .filter(|(_, p)| *p)
                .flat_map(|(v, _)| match v {
                    Value::Array(a) => a.iter().collect::<Vec<_>>(),
                    v => vec![v],
                })
                .collect()
        };
        for o in objects {
            let Some(map) = o.as_object() else { continue };
            for k in map.keys() {
                let envelope = level.is_empty() && (k == "schema" || k == "command");
                assert!(
                    envelope || children.contains(&k.as_str()),
                    "{command}: field `{k}` of `{level}` is not in docs/json.md: {o}"
                );
            }
        }
    }
}
