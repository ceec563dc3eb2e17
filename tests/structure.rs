//! The shape of `src/` that docs/architecture.md promises: no cycle between the top-level modules
//! (counting every `crate::` path outside `#[cfg(test)]`), no function longer than 80 lines, no
//! file over 600 lines of code, and no `too_many_arguments` allowance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 80;
const MAX_FILE_LINES: usize = 600;

/// Every `.rs` file under `src/`, with its text up to its `#[cfg(test)]` module.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap().to_string();
            (path.strip_prefix(&root).unwrap().to_path_buf(), code)
        })
        .collect()
}

/// `text` with comments, strings and char literals blanked (newlines kept), so that braces and
/// words in them are not counted.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: &[u8]| {
        out.extend(from.iter().map(|&b| if b == b'\n' { b'\n' } else { b' ' }))
    };
    while i < bytes.len() {
        let rest = &bytes[i..];
        let prev_ident = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            rest.windows(2).position(|w| w == b"*/").map_or(rest.len(), |p| p + 2)
        } else if let Some(start) = raw_string_start(rest).filter(|_| !prev_ident) {
            let hashes = rest[..start].iter().filter(|&&b| b == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            start + 1 + rest[start + 1..].windows(close.len()).position(|w| w == close).unwrap() + close.len()
        } else if rest[0] == b'"' {
            let mut j = 1;
            while rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == b'\'' && rest.len() > 2 && (rest[2] == b'\'' || rest[1] == b'\\') {
            // A char literal ('x', '\n', '\u{..}'); a lifetime has no closing quote right after.
            1 + rest[1..].iter().skip(1).position(|&b| b == b'\'').unwrap() + 2
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        blank(&mut out, &rest[..end]);
        i += end;
    }
    String::from_utf8(out).unwrap()
}

/// Where the opening quote of a raw string literal (`r"`, `r#"`, `br##"`…) at the start of `text`
/// is, if one starts there.
fn raw_string_start(text: &[u8]) -> Option<usize> {
    let after_b = usize::from(text.first() == Some(&b'b'));
    if text.get(after_b) != Some(&b'r') {
        return None;
    }
    let hashes = text[after_b + 1..].iter().take_while(|&&b| b == b'#').count();
    let quote = after_b + 1 + hashes;
    (text.get(quote) == Some(&b'"')).then_some(quote)
}

/// The top-level module a file belongs to (`src/<name>.rs` or `src/<name>/`).
fn top_module(path: &Path) -> String {
    let first = path.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn top_level_modules_form_no_cycle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let from = top_module(&path);
        if from == "main" || from == "lib" {
            continue;
        }
        let code = code_only(&text);
        for (at, _) in code.match_indices("crate::") {
            let to: String =
                code[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !to.is_empty() && to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert!(edges.contains_key("daemon") && edges["daemon"].contains("commit"), "the scan found nothing");
    // Depth-first search; a back edge is a cycle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
    assert!(edges.get("model").is_none_or(|to| to.is_empty()), "model is a leaf: {:?}", edges.get("model"));
}

/// Every function with a body: (file, name, first line, length in lines).
fn functions() -> Vec<(PathBuf, String, usize, usize)> {
    let mut out = Vec::new();
    for (path, text) in sources() {
        let code = code_only(&text);
        let bytes = code.as_bytes();
        for (at, _) in code.match_indices("fn ") {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let name: String =
                code[at + 3..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let Some(open) = code[at..].find(['{', ';']).map(|p| at + p) else { continue };
            if name.is_empty() || bytes[open] == b';' {
                continue;
            }
            let mut depth = 0;
            let mut close = open;
            for (i, &b) in bytes.iter().enumerate().skip(open) {
                depth += i32::from(b == b'{') - i32::from(b == b'}');
                if depth == 0 {
                    close = i;
                    break;
                }
            }
            let first = code[..at].matches('\n').count() + 1;
            let last = code[..close].matches('\n').count() + 1;
            out.push((path.clone(), name, first, last - first + 1));
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_80_lines() {
    let all = functions();
    assert!(all.len() > 300, "the scan found only {} functions", all.len());
    let long: Vec<String> = all
        .iter()
        .filter(|(_, _, _, lines)| *lines > MAX_FN_LINES)
        .map(|(path, name, line, lines)| format!("{}:{line} {name}: {lines} lines", path.display()))
        .collect();
    assert!(long.is_empty(), "functions over {MAX_FN_LINES} lines:\n{}", long.join("\n"));
}

#[test]
fn no_file_is_longer_than_600_lines_and_none_allows_too_many_arguments() {
    for (path, text) in sources() {
        let lines = text.lines().count();
        assert!(lines <= MAX_FILE_LINES, "{} has {lines} lines of code", path.display());
        assert!(!text.contains("too_many_arguments"), "{} allows too_many_arguments", path.display());
    }
}

#[test]
fn the_scanner_sees_through_strings_and_comments() {
    let code =
        code_only("fn a() { let s = \"}{\"; let c = '}'; // }\n let r = r#\"{\"#; 'x: loop {} }\nfn b() {}");
    assert_eq!(code.matches('{').count(), code.matches('}').count());
    assert!(code.contains("'x: loop"));
}
